"""Load original BlindspotModel1D checkpoints (Lightning .ckpt or bare state dict) and write them back.

Everything but dilation is inferred from the weights' shapes; dilation comes from an explicit option, a
YAML config beside the checkpoint, the d<N> token of the file name, else 1 -- and we say which.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common.describe import Description
from ..common.errors import FeatcacheError
from ..common.files import atomic_write, load_torch
from .encoder import BlindspotModel1D, EncoderConfig

MODEL_PREFIX = "model."
IGNORED_PREFIXES = ("noise_estimator.",)


@dataclass
class LoadedEncoder:
    """A model in eval mode plus where its settings came from."""

    model: BlindspotModel1D
    config: EncoderConfig
    path: Path | None
    file_format: str  # 'lightning' | 'state_dict' | 'random-init'
    dilation_source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def weights_digest(self) -> str:
        """sha256 over the model's tensors (names, shapes, bytes): the checkpoint's content identity."""
        return state_dict_digest(self.model.state_dict())


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def load_torch_file(path: Path) -> Any:
    """torch.load with weights_only=True (common.files.load_torch: the one weights-only reader)."""
    return load_torch(path)


def extract_model_state(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """The model's tensors (prefix stripped) from a Lightning checkpoint or a bare state dict."""
    if not isinstance(obj, dict):
        raise FeatcacheError(f"{source}: not a checkpoint (expected a dict of tensors or a Lightning "
                             f"checkpoint, got {type(obj).__name__})")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        raw, fmt = obj["state_dict"], "lightning"
        meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    else:
        raw, fmt, meta = obj, "state_dict", {}
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(MODEL_PREFIX) for k in tensors):
        state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    else:
        state = {k: v for k, v in tensors.items() if not k.startswith(IGNORED_PREFIXES)}
    if not state:
        raise FeatcacheError(f"{source}: no model weights found (expected keys like 'model.encoders.0.conv.weight')")
    return state, fmt, meta


def infer_config(state: dict[str, torch.Tensor], source: str, dilation: int = 1) -> EncoderConfig:
    """num_layers, embed_dim, kernel_size, input_sigma, use_bn from the weights' names and shapes."""
    key0 = "encoders.0.conv.weight"
    if key0 not in state:
        raise FeatcacheError(f"{source}: not a BlindspotModel1D: missing '{key0}'")
    w0 = state[key0]
    if w0.ndim != 3:
        raise FeatcacheError(f"{source}: '{key0}' has shape {tuple(w0.shape)}, expected (embed_dim, in, kernel)")
    embed_dim, in_channels, kernel_size = (int(s) for s in w0.shape)
    if in_channels not in (1, 2):
        raise FeatcacheError(f"{source}: '{key0}' has {in_channels} input channels, expected 1 or 2")
    enc_ids = {int(m.group(1)) for k in state if (m := re.match(r"encoders\.(\d+)\.conv\.weight$", k))}
    num_layers = max(enc_ids)
    use_bn = "encoders.0.bn.weight" in state
    blindspot = "nin_layers.0.conv.weight" not in state or state["nin_layers.0.conv.weight"].shape[1] == 2 * embed_dim
    return _config(source, num_layers=num_layers, embed_dim=embed_dim, kernel_size=kernel_size,
                         input_sigma=in_channels == 2, use_bn=use_bn, dilation=dilation, blindspot=blindspot)


def _config(source: str, **values: Any) -> EncoderConfig:
    try:
        return EncoderConfig(**values)
    except FeatcacheError as exc:
        raise FeatcacheError(f"{source}: {exc}") from None


def resolve_dilation(path: Path, explicit: int | None) -> tuple[int, str]:
    """Dilation from: the option, the YAML beside the checkpoint, the d<N> name token, else 1."""
    if explicit is not None:
        if int(explicit) < 1:
            raise FeatcacheError(f"--dilation {explicit}: must be an integer >= 1")
        return int(explicit), "option --dilation"
    for suffix in (".yaml", ".yml"):
        beside = path.with_suffix(suffix)
        if beside.exists():
            from ..common.yamlfile import load_yaml

            config = load_yaml(beside) or {}
            model = config.get("model") if isinstance(config, dict) else None
            if isinstance(model, dict) and "dilation" in model:
                value = model["dilation"]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise FeatcacheError(f"{beside}: model.dilation must be an integer >= 1, got {value!r}")
                return value, f"config {beside.name}"
    match = re.search(r"(?<=bn[01])d(\d+)|(?<![a-z])d(\d+)(?=ep|$|[._-])", path.stem)
    if match:
        return int(match.group(1) or match.group(2)), f"file name token '{match.group(0)}'"
    return 1, "default (1)"


def load_encoder(path: str | os.PathLike[str], *, dilation: int | None = None,
                 device: str | torch.device = "cpu") -> LoadedEncoder:
    """Load an original checkpoint strictly into a BlindspotModel1D in eval mode."""
    path = Path(path)
    if not path.exists():
        raise FeatcacheError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise FeatcacheError(f"{path}: is a directory, expected a checkpoint file (.ckpt)")
    state, fmt, meta = extract_model_state(load_torch_file(path), str(path))
    dil, source = resolve_dilation(path, dilation)
    config = infer_config(state, str(path), dilation=dil)
    model = BlindspotModel1D(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. '{unexpected[0]}')")
        raise FeatcacheError(f"{path}: keys do not form a BlindspotModel1D {config.tag}: " + "; ".join(parts))
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise FeatcacheError(f"{path}: '{name}' has shape {tuple(state[name].shape)}, expected "
                                 f"{tuple(tensor.shape)} for {config.tag}")
    for name, tensor in state.items():  # NaN weights would make a "complete" cache of NaN features
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FeatcacheError(f"{path}: '{name}' holds {bad} NaN or infinite values of {tensor.numel()}; a "
                                 "diverged or damaged checkpoint cannot encode spectra")
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedEncoder(model=model, config=config, path=path, file_format=fmt, dilation_source=source,
                         meta=meta)


def random_encoder(config: EncoderConfig, seed: int = 0, device: str | torch.device = "cpu") -> LoadedEncoder:
    """The same architecture with PyTorch's default (original) initialisation under a fixed seed."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BlindspotModel1D(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval().to(device)
    return LoadedEncoder(model=model, config=config, path=None, file_format="random-init",
                         dilation_source="option", meta={"seed": seed})


def save_checkpoint(model: BlindspotModel1D, path: str | os.PathLike[str], *, epoch: int = 0,
                    global_step: int = 0, extra: dict[str, Any] | None = None,
                    config_extra: dict[str, Any] | None = None) -> Path:
    """Write the original layout (weights under 'model.' in 'state_dict') plus a YAML config beside it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {MODEL_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"epoch": epoch, "global_step": global_step,
                               "pytorch-lightning_version": "featcache", "state_dict": state}
    if extra:
        payload.update(extra)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    cfg = model.config
    config = {"model": {"name": "blindspot", "num_layers": cfg.num_layers, "embed_dim": cfg.embed_dim,
                        "kernel_size": cfg.kernel_size, "input_sigma": cfg.input_sigma, "use_bn": cfg.use_bn,
                        "dilation": cfg.dilation, "blindspot": cfg.blindspot}}
    if config_extra:
        config.update(config_extra)
    atomic_write(path.with_suffix(".yaml"), lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=True)))
    return path


def describe_checkpoint(path: Path) -> Description:
    """What `featcache inspect ENC.ckpt` prints: the architecture inferred from the weights, and its taps."""
    loaded = load_encoder(path)
    cfg = loaded.config
    n_total = sum(p.numel() for p in loaded.model.parameters())
    data = {"path": str(path), "format": loaded.file_format, **cfg.as_dict(),
            "dilation_source": loaded.dilation_source, "parameters": n_total,
            "encoder_parameters": loaded.model.encoder_parameters(), "taps": loaded.model.tap_names,
            "weights_sha256": loaded.weights_digest(), **dict(loaded.meta.items())}
    lines = [f"checkpoint {path} ({loaded.file_format})",
             f"  architecture     BlindspotModel1D {cfg.tag}",
             f"  dilation         {cfg.dilation} (from {loaded.dilation_source})",
             f"  parameters       {n_total:,} (encoder {data['encoder_parameters']:,})",
             f"  taps             {', '.join(loaded.model.tap_names)}",
             f"  weights sha256   {data['weights_sha256'][:16]}"]
    for key, value in loaded.meta.items():
        lines.append(f"  {key:<16} {value}")
    return Description(data, "\n".join(lines))
