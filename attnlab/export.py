"""Export a trained run to a Hugging Face model directory (safetensors, config.json, tokenizer).

    python -m attnlab.export <run dir | checkpoint.ckpt> <out dir> [--checkpoint best|last]

The output loads with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
``AutoTokenizer.from_pretrained(out_dir)``: the input that llama.cpp's
``convert_hf_to_gguf.py`` and evaluation harnesses take. Nothing is downloaded:
every ``from_pretrained`` here gets a local path and ``local_files_only=True``.

Which variants export, and as what (``EXPORTS``, one row per variant):

    baseline -> LlamaForCausalLM   (the block is LLaMA-2's attention)
    qk_norm  -> Qwen3ForCausalLM   (RMSNorm per head on q and k before RoPE, as Qwen 3)

Any other variant changes the attention's math in a way no standard architecture
computes, and is refused with the list of exportable variants.

Weights. The fused ``attn.qkv`` rows are [q | k | v] with n_head query heads and
n_query_groups key/value heads of head_size each, head-major, which is exactly
HF's ``q_proj`` / ``k_proj`` / ``v_proj`` layout (query head h reads group
h // (n_head / n_query_groups) in both). ``mlp.fc_1`` is the SiLU-gated branch
(``gate_proj``), ``fc_2`` the linear one (``up_proj``), ``proj`` is ``down_proj``.
Both models use rotate-half RoPE over the whole head with the same base, the same
RMSNorm eps, 1/sqrt(head_size) scores and an untied ``lm_head``. Every attnlab
parameter must land in exactly one HF tensor and every HF tensor must be filled
(``load_state_dict(strict=True)``), so a variant with an extra parameter can never
be exported silently without it.

Padded vocabulary. attnlab pads ``wte`` and ``lm_head`` to a multiple of 64 rows
for matmul shapes; those rows are never produced by the tokenizer, and
``attnlab.generate`` masks their logits to -inf. The export drops them: the HF
``vocab_size`` is the tokenizer's vocabulary, ``embed_tokens`` and ``lm_head``
keep rows [0, vocab_size). Logits over real tokens are therefore identical, and
greedy search or sampling in HF can never pick a padding id (as in attnlab).

Tokenizer. The run's SentencePiece model is rebuilt as a ``tokenizers`` Unigram
(or BPE) model from its own pieces and scores (``tokenizer.json``), with
SentencePiece's input handling spelled out: the dummy "▁" prefix, spaces as "▁",
no other normalisation (attnlab trains with the identity normaliser) and byte
fallback for characters outside the vocabulary. ``tokenizer(text)`` adds ``<s>``
and no ``</s>``, as attnlab's training documents and prompts start
(``Tokenizer.encode(text, bos=True)``); ``add_special_tokens=False`` gives the bare
ids. ``tokenizer.model`` is copied beside it for tools that read SentencePiece
files. Known differences from ``sentencepiece`` itself, both outside ordinary
text: (1) text that spells a special piece literally ("<s>", "</s>", "<unk>",
"<pad>"), or with a unigram model a byte piece ("<0xE9>"), becomes that token in
HF instead of its characters; (2) on very long inputs (thousands of characters in
one call) a unigram near-tie can resolve differently, because sentencepiece sums
path scores in float32 and ``tokenizers`` in float64 (a 1,000-piece unigram model
on the demo corpus: no difference over its 150,000 lines, 13 of its 2,178
documents encoded whole). The export checks ja/en probe texts and refuses to
finish if any encodes differently.

Before the directory is put in place, the saved model is loaded back and its
logits are compared with attnlab's on the probe text (``max_logit_diff`` in the
report; a wrong mapping gives differences of order 1; on CPU in fp32 it measured 0.0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnlab.atomic import FILE_MODE, UMASK
from attnlab.checkpoint import load_checkpoint_config, load_model
from attnlab.config import ModelConfig
from attnlab.data.tokenizer import Tokenizer, check_vocab_fits
from attnlab.runs import CHECKPOINTS, RunDir

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

    from attnlab.model import GPT

INSTALL_HINT = "exporting needs transformers and safetensors: pip install -e '.[export]'"
# A wrong weight mapping moves logits by O(1). On CPU in fp32 the two implementations gave
# identical logits (max difference 0.0 at the tiny, gqa100m and seed100m shapes); the tolerance
# leaves room for other kernels and devices.
VERIFY_ATOL = 1e-3
PROBE_TEXTS = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
    "東京都は日本の首都で、人口は約1400万人です。",
    "The quick brown fox jumps over the lazy dog, 3 times in 2024.",
    "  leading spaces, trailing space \n\ttabs and\nnew lines ",
    "emoji 😀, accents éàü, Ωμέγα, 한국어 — rare characters fall back to bytes",
)


class ExportError(ValueError):
    """The run cannot be exported as asked (variant, shape, tokenizer or output)."""


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class ExportSpec:
    """How one attnlab variant becomes one HF architecture."""

    architecture: str  # the transformers class, e.g. "LlamaForCausalLM"
    build_config: Callable[[ModelConfig, Tokenizer], PretrainedConfig]
    map_state: Callable[[dict[str, Tensor], ModelConfig, int], dict[str, Tensor]]
    check: Callable[[ModelConfig], None]  # raise ExportError if this shape has no HF equivalent


def _check_common(config: ModelConfig) -> None:
    if config.rope_n_elem != config.head_size:
        raise ExportError(f"rotary_percentage={config.rotary_percentage} rotates {config.rope_n_elem} of "
                          f"{config.head_size} channels per head; the exported architectures rotate the "
                          f"whole head (rotary_percentage=1.0)")
    if config.lm_head_bias:
        raise ExportError("lm_head_bias=True has no place in LlamaForCausalLM or Qwen3ForCausalLM")


def _check_qwen3(config: ModelConfig) -> None:
    _check_common(config)
    if config.bias:
        raise ExportError("bias=True: Qwen3's MLP has no biases (only attention_bias)")


def _hf_config_kwargs(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The settings LlamaConfig and Qwen3Config share, from attnlab's ModelConfig."""
    return dict(
        vocab_size=tokenizer.vocab_size, hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden_size, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, num_key_value_heads=config.n_query_groups,
        head_dim=config.head_size, hidden_act="silu", max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps, rope_theta=float(config.rope_base),
        attention_bias=config.bias, tie_word_embeddings=False, initializer_range=config.init_std,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
    )


def _finish_config(hf_config: PretrainedConfig, architecture: str) -> PretrainedConfig:
    hf_config.architectures = [architecture]
    # transformers 5 writes RoPE's base only inside rope_parameters; readers built for
    # transformers 4 (and converters) look for the top-level key, so write both.
    hf_config.rope_theta = hf_config.rope_parameters["rope_theta"]
    return hf_config


def _llama_config(config: ModelConfig, tokenizer: Tokenizer) -> PretrainedConfig:
    from transformers import LlamaConfig

    return _finish_config(LlamaConfig(**_hf_config_kwargs(config, tokenizer), mlp_bias=config.bias),
                          "LlamaForCausalLM")


def _qwen3_config(config: ModelConfig, tokenizer: Tokenizer) -> PretrainedConfig:
    from transformers import Qwen3Config

    return _finish_config(Qwen3Config(**_hf_config_kwargs(config, tokenizer), use_sliding_window=False),
                          "Qwen3ForCausalLM")


def _decoder_state(state: dict[str, Tensor], config: ModelConfig, vocab_size: int,
                   attn_extra: dict[str, str]) -> dict[str, Tensor]:
    """attnlab GPT state dict -> the HF Llama/Qwen3 state dict (shared layout).

    ``attn_extra`` maps further attention parameters by suffix (``q_norm.weight`` ->
    ``self_attn.q_norm.weight``). Raises if any attnlab parameter is left unmapped.
    """
    remaining = dict(state)

    def take(name: str) -> Tensor:
        return remaining.pop(name)

    H, G, hs = config.n_head, config.n_query_groups, config.head_size
    out = {"model.embed_tokens.weight": take("wte.weight")[:vocab_size],
           "model.norm.weight": take("norm_f.weight"),
           "lm_head.weight": take("lm_head.weight")[:vocab_size]}
    params = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = take(src + "norm_1.weight")
        out[dst + "post_attention_layernorm.weight"] = take(src + "norm_2.weight")
        for p in params:
            q, k, v = take(f"{src}attn.qkv.{p}").split([H * hs, G * hs, G * hs], dim=0)
            out[f"{dst}self_attn.q_proj.{p}"] = q
            out[f"{dst}self_attn.k_proj.{p}"] = k
            out[f"{dst}self_attn.v_proj.{p}"] = v
            out[f"{dst}self_attn.o_proj.{p}"] = take(f"{src}attn.proj.{p}")
            out[f"{dst}mlp.gate_proj.{p}"] = take(f"{src}mlp.fc_1.{p}")
            out[f"{dst}mlp.up_proj.{p}"] = take(f"{src}mlp.fc_2.{p}")
            out[f"{dst}mlp.down_proj.{p}"] = take(f"{src}mlp.proj.{p}")
        for ours, theirs in attn_extra.items():
            out[f"{dst}self_attn.{theirs}"] = take(f"{src}attn.{ours}")
    if remaining:
        raise ExportError(f"variant {config.variant!r} has parameters with no place in the exported "
                          f"architecture: {', '.join(sorted(remaining))}")
    return out


def _llama_state(state: dict[str, Tensor], config: ModelConfig, vocab_size: int) -> dict[str, Tensor]:
    return _decoder_state(state, config, vocab_size, attn_extra={})


def _qwen3_state(state: dict[str, Tensor], config: ModelConfig, vocab_size: int) -> dict[str, Tensor]:
    return _decoder_state(state, config, vocab_size,
                          attn_extra={"q_norm.weight": "q_norm.weight", "k_norm.weight": "k_norm.weight"})


EXPORTS: dict[str, ExportSpec] = {
    "baseline": ExportSpec("LlamaForCausalLM", _llama_config, _llama_state, _check_common),
    # qk_norm: q_norm / k_norm (attnlab RMSNorm over head_size, eps=norm_eps) on q and k
    # after the qkv split and before RoPE: Qwen3Attention's order. Only usable where the
    # variant is registered (``variants.available_variants()``).
    "qk_norm": ExportSpec("Qwen3ForCausalLM", _qwen3_config, _qwen3_state, _check_qwen3),
}


def exportable_variants() -> list[str]:
    """The variants of ``EXPORTS`` that are registered in this tree (a run can only be of those)."""
    from variants import available_variants

    return [v for v in sorted(EXPORTS) if v in available_variants()]


def export_spec(variant: str) -> ExportSpec:
    if variant not in EXPORTS:
        listed = ", ".join(f"{v} (as {EXPORTS[v].architecture})" for v in exportable_variants())
        raise ExportError(f"variant {variant!r} cannot be exported to Hugging Face: its attention has no "
                          f"standard architecture; exportable variants: {listed}")
    return EXPORTS[variant]


# --------------------------------------------------------------------------- tokenizer

# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """attnlab's SentencePiece model as a ``tokenizers``-backed HF tokenizer (see the module doc)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, normalizers, processors
    from tokenizers.models import BPE, Unigram
    from transformers import PreTrainedTokenizerFast

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.path.read_bytes())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces or not norm.escape_whitespaces:
        problems.append(f"normalisation {norm.name!r} (remove_extra_whitespaces="
                        f"{norm.remove_extra_whitespaces}); attnlab trains with identity")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix")
    if any(p.type == _USER_DEFINED for p in proto.pieces):
        problems.append("user-defined pieces")
    if trainer.model_type not in (1, 2):
        problems.append(f"model type {trainer.model_type} (only unigram=1 and bpe=2)")
    if problems:
        raise ExportError(f"tokenizer {tokenizer.path} uses {', '.join(problems)}, which this export "
                          f"does not reproduce")

    pieces = [(p.piece, p.score) for p in proto.pieces]
    if trainer.model_type == 1:
        model = Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        from transformers.convert_slow_tokenizer import generate_merges

        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        special = [p.piece for p in proto.pieces if p.type != _NORMAL]
        model = BPE(vocab, generate_merges(vocab, pieces, special), unk_token=trainer.unk_piece,
                    fuse_unk=True, byte_fallback=trainer.byte_fallback)
    backend = HFTokenizer(model)
    prefix = [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(content=" ", left=1)] if norm.add_dummy_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), *strip])
    bos = tokenizer.id_to_piece(tokenizer.bos_id)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tokenizer.bos_id)])
    special_tokens = {name: tokenizer.id_to_piece(i) for name, i in (
        ("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id),
        ("unk_token", tokenizer.unk_id), ("pad_token", tokenizer.pad_id)) if i >= 0}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, add_bos_token=True, add_eos_token=False,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False, **special_tokens)


def _tokenizer_mismatches(hf_tok: Any, tokenizer: Tokenizer, texts: tuple[str, ...]) -> list[str]:
    bad = []
    for text in texts:
        ours = tokenizer.encode(text, bos=True)
        theirs = hf_tok(text)["input_ids"]
        bare = hf_tok(text, add_special_tokens=False)["input_ids"]
        decoded = hf_tok.decode(bare)
        if theirs != ours or bare != ours[1:] or decoded != tokenizer.decode(ours[1:]):
            bad.append(f"{text!r}: attnlab {ours} vs HF {theirs} (decoded {decoded!r})")
    return bad


# --------------------------------------------------------------------------- export

@dataclass
class ExportReport:
    out_dir: str
    variant: str
    architecture: str
    vocab_size: int  # rows exported: the tokenizer's vocabulary
    padded_rows_dropped: int
    max_logit_diff: float | None  # HF vs attnlab on the probe text; None if not verified


def export_model(model: GPT, tokenizer: Tokenizer, out_dir: str | Path, *, overwrite: bool = False,
                 verify: bool = True) -> ExportReport:
    """Write ``model`` and ``tokenizer`` as a Hugging Face model directory at ``out_dir``.

    The directory is assembled (and, with ``verify``, loaded back and checked) next to
    ``out_dir`` and renamed into place only when complete.
    """
    config = model.config
    spec = export_spec(config.variant)
    spec.check(config)
    check_vocab_fits(tokenizer.vocab_size, config.vocab_size)
    try:
        import safetensors  # noqa: F401  (save_pretrained writes model.safetensors with it)
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ExportError(INSTALL_HINT) from None
    out_dir = _check_out_dir(out_dir, overwrite)
    vocab_size = tokenizer.vocab_size
    state = spec.map_state(model.state_dict(), config, vocab_size)
    hf_config = spec.build_config(config, tokenizer)
    hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=model.wte.weight.dtype)
    hf_model.load_state_dict(state, strict=True)
    hf_tok = hf_tokenizer(tokenizer, model_max_length=config.block_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        with _quiet_transformers():
            hf_model.save_pretrained(staging, safe_serialization=True)
            hf_tok.save_pretrained(staging)
            _portable_tokenizer_config(staging / "tokenizer_config.json")
            shutil.copyfile(tokenizer.path, staging / "tokenizer.model")
            max_diff = _verify(model, tokenizer, staging) if verify else None
        _default_permissions(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(str(out_dir), config.variant, spec.architecture, vocab_size,
                        config.padded_vocab_size - vocab_size, max_diff)


def _portable_tokenizer_config(path: Path) -> None:
    """Name the class every transformers release knows, and state the BOS/EOS policy.

    transformers 5 saves ``tokenizer_class: TokenizersBackend`` (unknown to 4.x) and leaves
    ``add_bos_token`` out; ``PreTrainedTokenizerFast`` is the same class in 5.x and the
    tokenizer.json reader in 4.x, and tools such as evaluation harnesses read the flags.
    """
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _default_permissions(directory: Path) -> None:
    """mkdtemp makes the directory private, and safetensors files may come out 0600: use the umask."""
    directory.chmod(0o777 & ~UMASK)
    for path in directory.iterdir():
        path.chmod(FILE_MODE)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or length warnings from transformers while saving and verifying."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def _verify(model: GPT, tokenizer: Tokenizer, directory: Path) -> float:
    """Load ``directory`` back with the Auto classes; compare tokenizer ids and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    bad = _tokenizer_mismatches(hf_tok, tokenizer, PROBE_TEXTS)
    if bad:
        raise ExportError("the exported tokenizer encodes differently from the run's:\n  " + "\n  ".join(bad))
    hf_model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    ids = tokenizer.encode(" ".join(PROBE_TEXTS), bos=True)[:model.config.block_size]
    ours = model.eval()(torch.tensor([ids], device=model.wte.weight.device))[0, :, :tokenizer.vocab_size]
    theirs = hf_model(torch.tensor([ids])).logits[0]
    max_diff = float((ours.float().cpu() - theirs.float()).abs().max())
    if not max_diff <= VERIFY_ATOL:
        raise ExportError(f"exported model's logits differ from attnlab's by up to {max_diff:.3g} "
                          f"(tolerance {VERIFY_ATOL}): the weight mapping does not fit this model")
    return max_diff


def load_for_export(source: str | Path, checkpoint: str = "best",
                    tokenizer: str | Path | None = None) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a run directory, or of one checkpoint file.

    A run directory gives ``checkpoints/<checkpoint>.ckpt`` and its ``tokenizer.model``
    (through ``RunDir``, which checks the checkpoint against the run). A checkpoint
    file inside a run directory finds the tokenizer there; elsewhere pass ``tokenizer``.
    The variant is checked before any weights are read.
    """
    source = Path(source)
    if checkpoint not in CHECKPOINTS:
        raise ExportError(f"unknown checkpoint {checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}")
    run: RunDir | None = None
    if source.is_dir():
        run = RunDir(source)
        path = run.checkpoints / f"{checkpoint}.ckpt"
        if not path.is_file():
            raise ExportError(f"{source} is not a run directory with a checkpoint: {path} does not exist")
    elif source.is_file():
        path = source
        candidate = RunDir(source.parent.parent)
        if source.parent.name == "checkpoints" and candidate.config.is_file():
            run = candidate
    else:
        raise FileNotFoundError(f"{source} does not exist")

    export_spec(load_checkpoint_config(path).get("variant", "baseline"))
    if run is not None and path.stem in CHECKPOINTS and path.parent == run.checkpoints:
        model = run.load_model(path.stem)
    else:
        model = load_model(path)
    if tokenizer is not None:
        return model, Tokenizer(tokenizer)
    if run is None or not run.tokenizer.is_file():
        raise ExportError(f"no tokenizer.model found for {source}; pass --tokenizer <path to the "
                          f"run's tokenizer.model>")
    return model, run.load_tokenizer()


def _check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    return out_dir


def export(source: str | Path, out_dir: str | Path, checkpoint: str = "best",
           tokenizer: str | Path | None = None, overwrite: bool = False, verify: bool = True
           ) -> ExportReport:
    """``load_for_export`` then ``export_model``: what ``python -m attnlab.export`` runs."""
    _check_out_dir(out_dir, overwrite)  # before reading any weights
    model, tok = load_for_export(source, checkpoint, tokenizer)
    return export_model(model, tok, out_dir, overwrite=overwrite, verify=verify)


def main(argv: list[str] | None = None) -> int:
    listed = ", ".join(f"{v} -> {EXPORTS[v].architecture}" for v in exportable_variants())
    parser = argparse.ArgumentParser(
        prog="python -m attnlab.export",
        description=f"Write a run as a Hugging Face model directory. Exportable variants: {listed}.")
    parser.add_argument("source", help="a run directory (results/runs/<experiment>/<variant>/seed<k>) "
                                       "or a checkpoint file")
    parser.add_argument("out_dir", help="the directory to write (must be empty or absent)")
    parser.add_argument("--checkpoint", default=None, choices=CHECKPOINTS,
                        help="which checkpoint of a run directory (default: best)")
    parser.add_argument("--tokenizer", help="tokenizer.model, for a checkpoint outside its run directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back and comparing tokenizer ids and logits")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and Path(args.source).is_file():
        parser.error(f"--checkpoint {args.checkpoint} chooses a checkpoint of a run directory, but {args.source} "
                     f"is a checkpoint file itself; pass the run directory, or the file without --checkpoint")
    try:
        report = export(args.source, args.out_dir, args.checkpoint or "best", args.tokenizer,
                        overwrite=args.overwrite, verify=not args.no_verify)
    except (ValueError, FileNotFoundError) as err:
        print(f"attnlab.export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
