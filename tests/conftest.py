import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TEACHER_TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 60


@pytest.fixture(scope="session")
def teacher_folder(tmp_path_factory):
    """A saved tiny OPT teacher with its BPE tokenizer and a corpus.txt: what a hub teacher looks like offline."""
    from transformers import OPTConfig, OPTForCausalLM

    from spiking_lm.data import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = train_bpe_tokenizer([TEACHER_TEXT], vocab_size=320)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                       pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "corpus.txt").write_text(TEACHER_TEXT)
    return folder


@pytest.fixture(scope="session")
def student_folder(teacher_folder, tmp_path_factory):
    """A saved tiny BiSpikCLM student built from the teacher (weights copied), with the teacher's tokenizer."""
    from transformers import AutoTokenizer, OPTForCausalLM

    from spiking_lm import BiSpikCLMForCausalLM

    folder = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    student = BiSpikCLMForCausalLM.from_teacher(OPTForCausalLM.from_pretrained(teacher_folder), time_steps=2)
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(teacher_folder).save_pretrained(folder)
    return folder
