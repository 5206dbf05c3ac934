"""Hugging Face export: the exported model and tokenizer compute what attnlab computes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from attnlab.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from attnlab.export import (EXPORTS, ExportError, export, export_model, exportable_variants,  # noqa: E402
                            hf_tokenizer, load_for_export)
from attnlab.generate import SamplingConfig, generate  # noqa: E402
from attnlab.model import build_model  # noqa: E402
from attnlab.runs import RunDir  # noqa: E402
from conftest import tiny_config  # noqa: E402
from test_training import compose_config, tiny_overrides  # noqa: E402
from variants import available_variants  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Exportable variants that exist in this tree: qk_norm's row waits for its block to be registered.
VARIANTS = [v for v in exportable_variants() if v in available_variants()]
JAPANESE = "吾輩は猫である。名前はまだ無い。東京都の人口は約1400万人です。"
ENGLISH = "The quick brown fox jumps over the lazy dog, 3 times in 2024."
RARE = "鬱蒼とした森 😀 — Ωμέγα"  # characters outside a 1000-piece vocabulary: byte fallback


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """One tiny trained run per exportable variant (GQA: 4 query heads, 2 key/value groups)."""
    from attnlab.training.run import train

    root = tmp_path_factory.mktemp("export_runs")
    return {variant: train(compose_config([
        f"variant={variant}", "experiment_name=export", *tiny_overrides(root, corpus),
        "model.n_head=4", "model.n_query_groups=2"])) for variant in VARIANTS}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Each run exported once (best checkpoint): variant -> (report, out dir)."""
    root = tmp_path_factory.mktemp("exported")
    return {variant: (export(run.path, root / variant), root / variant) for variant, run in runs.items()}


def _load(out_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(out_dir, local_files_only=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_run_gives_attnlab_logits_and_greedy_text(variant, runs, exported):
    run = runs[variant]
    report, out_dir = exported[variant]
    assert report.architecture == EXPORTS[variant].architecture
    hf_model, _ = _load(out_dir)
    model, tok = run.load_model("best"), run.load_tokenizer()
    assert type(hf_model).__name__ == EXPORTS[variant].architecture
    # The padded rows are dropped: the HF vocabulary is the tokenizer's.
    assert hf_model.config.vocab_size == tok.vocab_size < model.config.padded_vocab_size
    assert report.padded_rows_dropped == model.config.padded_vocab_size - tok.vocab_size

    ids = torch.tensor([tok.encode(JAPANESE, bos=True)[:16], tok.encode(ENGLISH, bos=True)[:16]])
    with torch.no_grad():
        ours = model(ids)[..., :tok.vocab_size]
        theirs = hf_model(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    print(f"{variant}: max |logit difference| = {(theirs - ours).abs().max().item():.3g}")

    for penalty in (1.0, 1.1):  # HF's repetition penalty is the same CTRL rule as attnlab's
        prompt = tok.encode(ENGLISH[:20], bos=True)
        cfg = SamplingConfig(max_new_tokens=10, greedy=True, repetition_penalty=penalty)
        expected = generate(model, prompt, tok.vocab_size, cfg, eos_id=tok.eos_id)
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=10, repetition_penalty=penalty)
        assert out[0, len(prompt):].tolist() == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_is_mapped_to_its_place(variant, runs, tmp_path):
    """Random weights everywhere (norm gains included), so that a swapped tensor shows."""
    tok = runs[variant].load_tokenizer()
    model = build_model(tiny_config(variant, vocab_size=tok.vocab_size)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(1.0 if "norm" in name else 0.0, 0.3)
    report = export_model(model, tok, tmp_path / "hf")
    hf_model, _ = _load(tmp_path / "hf")
    ids = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids)[..., :tok.vocab_size], rtol=0, atol=1e-5)
    assert report.max_logit_diff <= 1e-5


def test_tokenizer_ids_and_text_round_trip(runs, exported):
    hf_tok = AutoTokenizer.from_pretrained(exported["baseline"][1], local_files_only=True)
    tok = runs["baseline"].load_tokenizer()
    for text in (JAPANESE, ENGLISH, RARE):
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == [tok.bos_id, *ids]  # <s> first, as in training
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
        assert hf_tok.decode(ids) == tok.decode(ids) == text
    assert any(tok.is_byte(i) for i in tok.encode(RARE)), "byte fallback was not exercised"
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id) == \
        (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id)


def test_bpe_tokenizer_encodes_like_sentencepiece(corpus, tmp_path):
    from attnlab.data.config import TokenizerConfig

    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    sentences = [s for t in texts for s in t.split("\n") if s]
    train_tokenizer(iter(sentences), TokenizerConfig(vocab_size=1000, model_type="bpe",
                                                     character_coverage=0.98), tmp_path / "bpe.model")
    tok = Tokenizer(tmp_path / "bpe.model")
    hf_tok = hf_tokenizer(tok, model_max_length=1 << 20)
    for text in (JAPANESE, ENGLISH, RARE, *sentences[::7]):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text


def test_a_variant_without_an_hf_architecture_is_refused_with_the_exportable_ones(runs, tmp_path):
    model = build_model(tiny_config("qk_scale", vocab_size=1000))
    with pytest.raises(ExportError, match=r"variant 'qk_scale' cannot be exported.*baseline \(as LlamaForCausalLM\)"):
        export_model(model, runs["baseline"].load_tokenizer(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_checkpoint_of_another_variant_is_refused_before_its_weights_are_read(runs, monkeypatch):
    import attnlab.export as export_module

    monkeypatch.setattr(export_module, "load_checkpoint_config", lambda path: {"variant": "qk_scale"})
    for owner in (export_module, RunDir):
        monkeypatch.setattr(owner, "load_model", lambda *args: pytest.fail("weights were read"))
    with pytest.raises(ExportError, match=r"'qk_scale' cannot be exported.*exportable variants: baseline"):
        load_for_export(runs["baseline"].last_checkpoint)


def test_a_parameter_with_no_place_in_the_architecture_is_refused():
    model = build_model(tiny_config("baseline"))
    state = {**model.state_dict(), "blocks.1.attn.extra.weight": torch.zeros(3)}
    with pytest.raises(ExportError, match=r"no place .*blocks\.1\.attn\.extra\.weight"):
        EXPORTS["baseline"].map_state(state, model.config, 100)


def test_checkpoint_file_finds_its_run_tokenizer(runs):
    run = runs["baseline"]
    model, tok = load_for_export(run.last_checkpoint)
    assert tok.sha256 == run.load_tokenizer().sha256 and model.config.variant == "baseline"


@pytest.mark.slow  # two interpreters that import torch and transformers
def test_cli_exports_a_run_and_refuses_a_non_empty_output(runs, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "attnlab.export", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "hf"
    done = cli(runs["baseline"].path, out, "--checkpoint", "last")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["architecture"] == "LlamaForCausalLM"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "tokenizer.model"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    again = cli(runs["baseline"].path, out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # --checkpoint chooses within a run directory: with a checkpoint file it would go unread
    from attnlab.export import main

    with pytest.raises(SystemExit) as exited:
        main([str(runs["baseline"].last_checkpoint), str(tmp_path / "hf2"), "--checkpoint", "best"])
    assert exited.value.code == 2 and not (tmp_path / "hf2").exists()
