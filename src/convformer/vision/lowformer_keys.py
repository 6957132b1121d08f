"""LowFormer key layouts: ours, timm's (``timm.models.lowformer``) and the authors' (``lowformer_model.py``
in altair199797/LowFormer, the layout of their released checkpoints).

The three differ in module names only; tensor shapes are the same. The key map is built from the model
configuration as a list of (ours, timm, official) module prefixes, one row per module, so it is explicit
and complete for every variant (stem blocks or not, attention and MLP branches or not, fused or not).
A key is renamed by its longest listed prefix.
"""
from __future__ import annotations

LAYOUTS = ("convformer", "timm", "official")


def _block_parts(fused: bool) -> list[tuple[str, str]]:
    """Our InvertedResidual's parts and the reference implementations' names for them."""
    if fused:
        return [("expand", "spatial_conv"), ("project", "point_conv")]
    return [("expand", "inverted_conv"), ("dw", "depth_conv"), ("project", "point_conv")]


def _conv_block(rows: list, ours: str, timm: str, official: str, fused: bool) -> None:
    for mine, theirs in _block_parts(fused):
        rows.append((f"{ours}.{mine}", f"{timm}.{theirs}", f"{official}.{theirs}"))


def prefix_rows(cfg) -> list[tuple[str, str, str]]:
    """Every module of a LowFormer built from ``cfg`` as (our prefix, timm's, official)."""
    rows = [("stem.conv", "stem.0.conv", "backbone.input_stem.op_list.0.conv"),
            ("stem.norm", "stem.0.norm", "backbone.input_stem.op_list.0.norm")]
    for j in range(cfg.depths[0]):
        _conv_block(rows, f"stem.blocks.{j}", f"stem.{j + 1}.main", f"backbone.input_stem.op_list.{j + 1}.main",
                    cfg.fused)
    for i, (dim, depth) in enumerate(zip(cfg.widths[1:], cfg.depths[1:])):
        official = f"backbone.stages.{i}.op_list"
        _conv_block(rows, f"stages.{i}.downsample", f"stages.{i}.0.main", f"{official}.0.main", cfg.fused)
        blocks = depth - 1 if i < 2 else depth
        for j in range(blocks):
            ours, timm, off = f"stages.{i}.blocks.{j}", f"stages.{i}.{j + 1}", f"{official}.{j + 1}"
            if i < 2:
                _conv_block(rows, ours, f"{timm}.main", f"{off}.main", cfg.fused)
                continue
            # attention block: timm names the branches attn/mlp/local; the official code nests them
            # as total.0 (attention [+ MLP]) and total.1 (local)
            if cfg.attention:
                if cfg.mlp:
                    rows.append((f"{ours}.norm1", f"{timm}.attn.main.0", f"{off}.total.0.0.main.0"))
                    mixer_t, mixer_o = f"{timm}.attn.main.1", f"{off}.total.0.0.main.1"
                else:
                    mixer_t, mixer_o = f"{timm}.attn.main", f"{off}.total.0.main"
                m = f"{ours}.token_mixer"
                rows += [(f"{m}.down", f"{mixer_t}.conv_proj.conv", f"{mixer_o}.conv_proj.0"),
                         (f"{m}.down_norm", f"{mixer_t}.conv_proj.norm", f"{mixer_o}.conv_proj.1"),
                         (f"{m}.qkv", f"{mixer_t}.pwise", f"{mixer_o}.pwise.0"),
                         (f"{m}.proj", f"{mixer_t}.o_proj", f"{mixer_o}.o_proj"),
                         (f"{m}.up", f"{mixer_t}.upsampling", f"{mixer_o}.upsampling")]
            if cfg.mlp:
                mlp_o = f"{off}.total.0.1.main" if cfg.attention else f"{off}.total.0.main"
                rows += [(f"{ours}.norm2", f"{timm}.mlp.main.0", f"{mlp_o}.0"),
                         (f"{ours}.mlp.fc1", f"{timm}.mlp.main.1", f"{mlp_o}.1"),
                         (f"{ours}.mlp.fc2", f"{timm}.mlp.main.3", f"{mlp_o}.3")]
            _conv_block(rows, f"{ours}.local", f"{timm}.local.main", f"{off}.total.1.main", cfg.fused and dim < 256)
    rows += [("head.conv", "in_conv", "head.op_list.0"),
             ("head.fc1", "pre_classifier.0", "head.op_list.2.linear"),
             ("head.norm", "pre_classifier.1", "head.op_list.2.norm"),
             ("head.fc", "classifier", "head.op_list.3.linear")]
    return rows


def detect_layout(state: dict) -> str:
    keys = state.keys()
    if any(k.startswith("backbone.input_stem.") for k in keys):
        return "official"
    if any(k.startswith("stem.0.") for k in keys):
        return "timm"
    return "convformer"


def rename(state: dict, cfg, src: str, dst: str) -> dict:
    """Rename every key of ``state`` from layout ``src`` to ``dst`` (keys with no listed prefix are kept,
    so the caller's missing/unexpected-key check reports them)."""
    if src == dst:
        return dict(state)
    a, b = LAYOUTS.index(src), LAYOUTS.index(dst)
    table = {row[a]: row[b] for row in prefix_rows(cfg)}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                key = table[prefix] + "." + ".".join(parts[cut:])
                break
        out[key] = value
    return out


def to_our_names(state: dict, cfg) -> tuple[dict, str]:
    """Any known LowFormer layout -> ours; returns (state, detected layout)."""
    layout = detect_layout(state)
    return rename(state, cfg, layout, "convformer"), layout
