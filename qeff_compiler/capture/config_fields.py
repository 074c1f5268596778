"""The JSON types of an MPT config.json's fields, checked before HF's `MptConfig` sees them.

HF validates a config's fields as a strict dataclass, and a wrong type (`"n_heads": true`, `"d_model": null`,
`"attn_config": "foo"`) surfaces as a long traceback from inside transformers. Each field HF's `MptConfig` and
`MptAttentionConfig` declare is checked here against the JSON types it allows, and the message names the field,
what is allowed and what was found. Fields HF declares as float also accept a JSON integer (`"clip_qkv": 6`),
converted here, since JSON does not tell 6 from 6.0 and HF would refuse the integer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qeff_compiler.capture.json_files import json_kind
from qeff_compiler.errors import ModelSourceError

INTEGER, NUMBER, BOOLEAN, STRING, NULL, OBJECT, INTEGERS, STRINGS = (
    "an integer", "a number", "a boolean", "a string", "null", "an object", "a list of integers", "a list of strings",
)
#: fields every HF config has (MptConfig and its attn_config alike); none affects the computation
_GENERIC: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("transformers_version", "problem_type", "dtype", "torch_dtype", "_name_or_path"), (STRING, NULL)),
    "architectures": (STRINGS, NULL),
    **dict.fromkeys(
        ("output_hidden_states", "output_attentions", "return_dict", "is_encoder_decoder"), (BOOLEAN, NULL)
    ),
    **dict.fromkeys(("id2label", "label2id"), (OBJECT, NULL)),
    **dict.fromkeys(("chunk_size_feed_forward", "num_labels"), (INTEGER,)),
}
#: HF builds a label table of num_labels entries
_MAX_LABELS = 2**16
_TOP_LEVEL: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size"), (INTEGER,)),
    **dict.fromkeys(
        ("resid_pdrop", "emb_pdrop", "layer_norm_epsilon", "embedding_fraction", "initializer_range"), (NUMBER,)
    ),
    **dict.fromkeys(("learned_pos_emb", "no_bias", "use_cache", "tie_word_embeddings"), (BOOLEAN,)),
    **dict.fromkeys(("init_device", "norm_type"), (STRING,)),
    "logit_scale": (NUMBER, STRING, NULL),
    "attn_config": (OBJECT, NULL),
    **dict.fromkeys(("pad_token_id", "bos_token_id"), (INTEGER, NULL)),
    "eos_token_id": (INTEGER, INTEGERS, NULL),
}
_ATTENTION: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("attn_type", "attn_impl"), (STRING,)),
    # HF's MptAttentionConfig declares attn_pdrop an int (dropout is off in inference; 0 is the only useful value)
    **dict.fromkeys(("attn_pdrop", "alibi_bias_max"), (INTEGER,)),
    **dict.fromkeys(("clip_qkv", "softmax_scale"), (NUMBER, NULL)),
    **dict.fromkeys(("prefix_lm", "qk_ln", "attn_uses_sequence_id", "alibi"), (BOOLEAN,)),
}


def check_config_fields(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """`raw` (config.json's object) with float fields' integers made floats; a field of a type its HF declaration
    does not allow is a `ModelSourceError` naming the field, the allowed types and the value found."""
    fields = _checked(raw, _TOP_LEVEL, "config", path)
    if isinstance(fields.get("attn_config"), dict):
        fields["attn_config"] = _checked(fields["attn_config"], _ATTENTION, "config.attn_config", path)
    return fields


def _checked(raw: dict[str, Any], allowed: dict[str, tuple[str, ...]], prefix: str, path: Path) -> dict[str, Any]:
    fields = dict(raw)
    for name, kinds in {**_GENERIC, **allowed}.items():
        if name not in fields:
            continue
        value = fields[name]
        kind = _kind(value)
        if value == [] and (INTEGERS in kinds or STRINGS in kinds):
            continue
        if kind == INTEGER and INTEGER not in kinds and NUMBER in kinds:
            fields[name] = float(value)
        elif kind not in kinds:
            raise ModelSourceError(f"{path}: {prefix}.{name} must be {' or '.join(kinds)}, got {json_kind(value)}")
    _check_generic_values(fields, prefix, path)
    return fields


def _check_generic_values(fields: dict[str, Any], prefix: str, path: Path) -> None:
    """The values HF converts while it builds the config: dtype names, label ids, the label count."""
    import torch

    for name in ("dtype", "torch_dtype"):
        value = fields.get(name)
        if value is not None and not isinstance(getattr(torch, value, None), torch.dtype):
            raise ModelSourceError(f"{path}: {prefix}.{name} must name a torch dtype (e.g. 'bfloat16'), got {value!r}")
    labels = fields.get("id2label") or {}
    for key, label in labels.items():
        if not key.strip().lstrip("-").isdecimal() or not isinstance(label, str):
            raise ModelSourceError(
                f"{path}: {prefix}.id2label must map integer ids to label strings, got {key!r}: {json_kind(label)}"
            )
    count = fields.get("num_labels", 0)
    if not 0 <= count <= _MAX_LABELS:
        raise ModelSourceError(f"{path}: {prefix}.num_labels must be in [0, {_MAX_LABELS}], got {count}")


def _kind(value: object) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list) and all(_kind(v) == INTEGER for v in value):
        return INTEGERS
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return STRINGS
    return OBJECT if isinstance(value, dict) else "an array"
