import logging, os
import pytest

logging.getLogger("transformers").setLevel(logging.ERROR)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    "One run folder shared by the notebook tests (each runs its own notebook into it)."
    return tmp_path_factory.mktemp("smoke")
