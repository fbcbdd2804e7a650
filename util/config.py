"""Config facts both packages use: the schema's defaults (the one place they are written,
with config.yaml), the ``--config`` argument, the default rejects file."""
from __future__ import annotations

import functools
import json
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    import yaml
    return yaml.safe_load(SCHEMA.read_text())


def _defaults_of(props: dict) -> dict:
    out = {}
    for key, spec in props.items():
        if "default" in spec:
            default = spec["default"]
            # a block's defaults are its own keys' defaults (the schema says {} for them)
            if isinstance(default, dict) and "properties" in spec:
                default = {**_defaults_of(spec["properties"]), **default}
            out[key] = default
    return out


def defaults(block: str) -> dict:
    """The defaults of config block ``block`` (nested blocks filled in), from the schema."""
    return json.loads(json.dumps(_defaults_of(_schema()["properties"][block]["properties"])))


def with_defaults(block: str, cfg: dict) -> dict:
    """``cfg`` (part of block ``block``) over the block's schema defaults; an unknown key is
    an error (a stage called with a misspelled key must not run on defaults)."""
    known = defaults(block)
    unknown = set(cfg) - set(known)
    if unknown:
        raise ValueError(f"unknown {block} keys: {sorted(unknown)}")
    return {**known, **cfg}


def load_config_arg(text: str) -> dict:
    """``--config`` is JSON text, or ``@file`` holding JSON or YAML."""
    if text.startswith("@"):
        import yaml
        return yaml.safe_load(Path(text[1:]).read_text())
    return json.loads(text)


def default_rejects(name: str) -> str:
    """The review page's rejects file when rank.rejects is null (relative to the workdir)."""
    return f"characters/{name}.rejects.txt"
