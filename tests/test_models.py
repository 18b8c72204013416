import json, time
from pathlib import Path
import pytest, torch
from transformers import AutoModelForCausalLM
from ortho_nbs.models import (load_model, save_model, tiny_model, tiny_tokenizer, resolve_device, PACKAGED_MODELS,
                              TINY_FAMILIES)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as e: load_model("smollm-9000")
    for name in PACKAGED_MODELS: assert name in str(e.value)


def test_directory_without_model_says_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="missing weights"): load_model(tmp_path)


def test_cuda_refused_without_gpu():
    if torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"): resolve_device("cuda")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_reload_identical_logits(tmp_path, family):
    model, tok = tiny_model(family), tiny_tokenizer()
    out = save_model(model, tok, tmp_path / "m")
    assert not list(tmp_path.glob(".m.tmp-*")), "temporary folder left behind"
    again, tok2 = load_model(out)
    x = torch.tensor([[5, 9, 13, 20]])
    with torch.no_grad(): assert torch.equal(model(x).logits, again(x).logits)
    assert again.ortho_source["sha256"] and json.loads((out / "ortho_nbs.json").read_text())["source"]["name"] == f"tiny-{family}"


def test_save_refuses_existing_and_source(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    out = save_model(model, tok, tmp_path / "m")
    (out / "marker").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"): save_model(model, tok, out)
    assert (out / "marker").read_text() == "keep me"          # nothing lost
    loaded, _ = load_model(out)
    with pytest.raises(ValueError, match="source"): save_model(loaded, tok, out, overwrite=True)
    save_model(model, tok, out, overwrite=True)              # asked for: replaced whole
    assert not (out / "marker").exists()
    replaced, x = AutoModelForCausalLM.from_pretrained(out), torch.tensor([[5, 9, 13, 20]])
    with torch.no_grad(): assert torch.equal(replaced(x).logits, model(x).logits)   # the new save, not the old files


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model, tok = tiny_model(), tiny_tokenizer()
    def boom(*a, **k): raise RuntimeError("disk full")
    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"): save_model(model, tok, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


# ---- issue #36: models that are not causal, paths that do not exist, hub ids not downloaded ----

def test_tiny_bert_is_refused_as_not_causal(tmp_path):
    from transformers import BertConfig, BertLMHeadModel
    BertLMHeadModel(BertConfig(vocab_size=102, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\(BertLMHeadModel\) is not a causal language model: its config says is_decoder=False"):
        load_model(tmp_path)


def test_one_forward_test_tells_causal_from_bidirectional():
    from transformers import BertConfig, BertLMHeadModel
    from ortho_nbs.models import _sees_later_tokens
    bert = BertLMHeadModel(BertConfig(vocab_size=102, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    assert _sees_later_tokens(bert)
    assert not any(_sees_later_tokens(tiny_model(f)) for f in TINY_FAMILIES)


def test_missing_model_folder_says_no_such_directory(tmp_path):
    for name in (tmp_path / "no-model", "./no/such/model/here", "~/no-such-model-folder/"):
        with pytest.raises(ValueError, match="no such directory"): load_model(name)


def test_two_part_name_not_downloaded_fails_fast():
    t0 = time.time()
    with pytest.raises(ValueError, match=r"'my/model' is not a local folder \(no such directory: .*\) and not a model in the "
                                         r"Hugging Face cache; nothing was fetched from the hub"):
        load_model("my/model")
    assert time.time() - t0 < 10
