"""The one-row kernel (model/_rowmlp.c, FusedEnsemble.row_mean): the fused ensemble's mean for one row, to
float32 rounding; the same bits whichever way a row reaches it; refused inputs raise instead of reading
memory they do not own; and networks it cannot compute exactly are left to numpy."""

from __future__ import annotations

import importlib.util
import pathlib
import platform
import shlex
import subprocess
import sysconfig

import numpy as np
import pytest
import torch

from model import _rowmlp  # built by scripts/bootstrap (pip install -e .): a missing build fails here
from model.config import TrainingConfig
from model.network import FusedEnsemble, build_network
from model.preprocessing import Preprocessor
from model.regressor import Regressor
from model.schema import Feature, Kind, Schema


def fused_of(hidden: tuple[int, ...], members: int, inputs: int = 7) -> FusedEnsemble:
    torch.manual_seed(0)
    fused = FusedEnsemble.of(build_network(inputs, hidden, 0.1, members).eval())
    assert fused is not None
    return fused


@pytest.mark.parametrize(("hidden", "members"), [((16, 8, 4), 5), ((16, 8), 5), ((12,), 3), ((128, 64), 5)])
def test_one_row_is_the_fused_mean(hidden: tuple[int, ...], members: int) -> None:
    fused = fused_of(hidden, members)
    assert fused.row_mean is not None
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        row = torch.randn(1, 7, generator=generator)
        row[0, torch.rand(7, generator=generator) < 0.4] = 0.0   # one-hot columns: zeros the kernel skips
        with torch.inference_mode():
            reference = float(fused(row)[0])
        assert fused.row_mean([float(value) for value in row[0]]) == pytest.approx(reference, rel=0, abs=1e-6)


def test_a_non_finite_input_gives_a_non_finite_mean() -> None:
    fused = fused_of((16, 8), 5)
    assert fused.row_mean is not None
    for bad in (float("nan"), float("inf"), 1e39):   # 1e39 is inf once rounded to float32
        assert not np.isfinite(fused.row_mean([bad, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))


def test_the_linear_model_wide_layers_and_non_finite_weights_take_numpy() -> None:
    assert fused_of((), 1).row_mean is None   # no hidden layer: numpy's one product
    torch.manual_seed(0)
    network = build_network(7, (8,), 0.0, 2).eval()
    with torch.no_grad():
        network.members[0][0].weight[0, 0] = float("inf")
    fused = FusedEnsemble.of(network)
    assert fused is not None and fused.row_mean is None
    wide = fused_of((3000,), 3)   # 3 x 3001 units side by side: more than the kernel's stack holds
    assert wide.row_mean is None and wide.numpy_mean(np.ones((1, 7), np.float32)).shape == (1,)
    many = _rowmlp.MAX_WIDTH + 1   # inputs: a category of many levels; one row still predicts, through numpy
    torch.manual_seed(0)
    regressor = Regressor(Preprocessor(Schema("y", tuple(Feature(f"x{i}", Kind.NUMERIC) for i in range(many))),
                                       {f"x{i}": (0.0, 1.0) for i in range(many)}, {}, "none", (0.0, 1.0)),
                          build_network(many, (4,), 0.0, 2), TrainingConfig())
    row = [0.5] * many
    assert FusedEnsemble.of(regressor.network).row_mean is None   # type: ignore[union-attr]
    np.testing.assert_allclose(regressor.predict_row(row), regressor.predict_encoded(np.array([row, row],
                                                                                            np.float32))[:1],
                               rtol=1e-6)


def test_bad_arguments_raise() -> None:
    fused = fused_of((16, 8), 5)
    assert fused.row_mean is not None
    packed, dims = fused.row_mean.args   # type: ignore[attr-defined]   # a functools.partial
    row = [0.5] * 7
    assert _rowmlp.mean(packed, dims, row) == fused.row_mean(row)
    with pytest.raises(TypeError, match="one float per input"):
        _rowmlp.mean(packed, dims, [0.5] * 6)
    with pytest.raises(TypeError, match="one float per input"):
        _rowmlp.mean(packed, dims, [0.5] * 6 + [1])
    with pytest.raises(TypeError, match="one float per input"):
        _rowmlp.mean(packed, dims, tuple(row))   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="as long as dims say"):
        _rowmlp.mean(packed[:-1], dims, row)
    with pytest.raises(ValueError, match="as long as dims say"):
        _rowmlp.mean(packed.astype(np.float64), dims, row)
    with pytest.raises(ValueError, match="multiple of members"):
        _rowmlp.mean(packed, (dims[0], 7, *dims[2:]), row)
    with pytest.raises(ValueError, match="between 1 and 8192"):
        _rowmlp.mean(packed, (dims[0], dims[1], 0, *dims[3:]), row)
    with pytest.raises(TypeError, match="3 arguments"):
        _rowmlp.mean(packed, dims)   # type: ignore[call-arg]


def test_a_row_predicts_the_same_bits_from_a_list_an_array_and_a_batch_of_one() -> None:
    schema = Schema("price", (Feature("age", Kind.NUMERIC), Feature("fuel", Kind.CATEGORICAL)))
    preprocessor = Preprocessor(schema, {"age": (40.0, 12.0)}, {"fuel": ("Diesel", "Petrol")}, "log", (9.5, 0.4))
    torch.manual_seed(0)
    regressor = Regressor(preprocessor, build_network(preprocessor.n_inputs, (16, 8), 0.0, 5), TrainingConfig())
    for age in ("3", "40", "77.5", "-12"):
        values = preprocessor.encode_row([age, "Petrol"])
        assert values is not None
        alone = regressor.predict_row(values)
        batch = regressor.predict_encoded(np.array([values], np.float32))
        assert alone.dtype == np.float64 and alone.tobytes() == batch.tobytes()
        pair = regressor.predict_encoded(np.array([values, values], np.float32))   # numpy's route: close
        np.testing.assert_allclose(pair, np.concatenate([alone, alone]), rtol=1e-6)


def _cpu_flags() -> set[str]:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the forward pass is cloned per instruction set on x86-64")
def test_every_instruction_set_gives_the_same_bits(tmp_path: pathlib.Path) -> None:
    """The built module runs its AVX2 clone where the CPU has AVX2; the source built for one target at a
    time (SSE, x86-64's baseline, AVX2, and AVX-512 in case a clone is ever added for it) answers the same
    bits, so a model predicts the same on every machine: nothing fuses a multiply and an add, nothing
    reorders a sum."""
    flags = _cpu_flags()
    targets = {"sse": "-mno-avx", "avx2": "-mavx2", "avx512f": "-mavx512f"}
    runnable = {name: flag for name, flag in targets.items() if name == "sse" or name in flags}
    source = pathlib.Path(_rowmlp.__file__).with_name("_rowmlp.c")
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    variants = {}
    for name, flag in runnable.items():
        built = tmp_path / name / f"_rowmlp{suffix}"
        built.parent.mkdir()
        subprocess.run([*compiler, "-shared", "-fPIC", "-O3", "-ffp-contract=off", flag, "-DROWMLP_ONE_TARGET",
                        f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(built)], check=True)
        spec = importlib.util.spec_from_file_location("_rowmlp", built)
        assert spec is not None and spec.loader is not None
        variants[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(variants[name])
    generator = np.random.default_rng(3)
    for hidden, members, inputs in (((128, 64), 5, 36), ((16, 8, 4), 3, 7), ((33,), 1, 50), ((200, 31, 17), 2, 100)):
        fused = fused_of(hidden, members, inputs)
        assert fused.row_mean is not None
        packed, dims = fused.row_mean.args   # type: ignore[attr-defined]   # a functools.partial
        for _ in range(300):
            row = (generator.normal(size=inputs) * (generator.random(inputs) < 0.5)).astype(np.float32)
            values = [float(value) for value in row]
            expected = _rowmlp.mean(packed, dims, values)
            assert {name: module.mean(packed, dims, values) for name, module in variants.items()} == \
                dict.fromkeys(variants, expected), (hidden, values)
