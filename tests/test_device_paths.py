"""The paths built for CUDA, checked on the CPU provider: IO binding, perturbations made inside
the graph (same maps as the host path, bit for bit), the device selection and the batch
budget taken from the device's free memory."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import EXAMPLES, model_path

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError, DeviceError, ModelInputError, ModelRunError
from blackbox_xai.methods.rise import rise_masks
from blackbox_xai.methods.shapley import draw_permutations, prefix_keep, ranks
from blackbox_xai.model import Model, one_hot
from blackbox_xai.perturb import GridMasks, SegmentMasks, make_baseline, scores_for_masks
from blackbox_xai.runtime import (
    CPU,
    CPU_INPUT_BUDGET,
    CUDA,
    DEVICE_ENV,
    batch_limit,
    input_budget,
    ort_value,
    resolve_device,
    run,
)
from blackbox_xai.segmentation import segment

VARIANTS = ["tiny_cnn", "tiny_cnn_nhwc", "tiny_cnn_fp16"]
GiB = 2**30


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((3, 32, 32)).astype(np.float32)


def pair(name: str, **kwargs) -> tuple[Model, Model]:
    """The same model on the host path and with perturbations inside the graph."""
    host = load_model(model_path(name), device="cpu", batch_size=16, **kwargs)
    graph = load_model(model_path(name), device="cpu", batch_size=16, perturb_in_graph=True,
                       io_binding=True, **kwargs)
    return host, graph


# ---- IO binding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,score", [("tiny_cnn", "logit"), ("tiny_cnn_nhwc", "logit"),
                                        ("tiny_cnn_fp16", "logit"), ("tiny_cnn_softmax", "prob"),
                                        ("tiny_nonlinear", "logprob")])
def test_io_binding_gives_bit_identical_scores(name, score):
    batch = np.random.default_rng(1).standard_normal((37, 3, 32, 32)).astype(np.float32)
    plain = load_model(model_path(name), device="cpu", score=score, batch_size=8)
    bound = load_model(model_path(name), device="cpu", score=score, batch_size=8, io_binding=True)
    assert (plain.io_binding, bound.io_binding) == (False, True)
    np.testing.assert_array_equal(bound(batch), plain(batch))
    assert bound.n_queries == plain.n_queries == 37


def test_io_binding_gives_bit_identical_gradients(x):
    plain = load_model(model_path("tiny_cnn"), device="cpu")
    bound = load_model(model_path("tiny_cnn"), device="cpu", io_binding=True)
    batch = np.stack([x, -x, 2 * x])
    seed = one_hot(3, plain.num_classes, 2)
    for want, got in zip(plain.input_gradient(batch, seed), bound.input_gradient(batch, seed)):
        np.testing.assert_array_equal(got, want)


def test_bound_runs_take_ort_values_and_fail_in_one_line():
    model = load_model(model_path("tiny_cnn"), device="cpu")
    batch = np.ones((2, 3, 32, 32), np.float32)
    value = ort_value(batch, model.session)
    assert value.device_name().lower() == "cpu"
    (got,) = run(model.session, [model.logits_name], {"x": value})
    np.testing.assert_array_equal(got, model.session.run([model.logits_name], {"x": batch})[0])
    with pytest.raises(ModelRunError, match="^ONNX Runtime failed running the model on a batch "
                                            "of 2: ") as e:
        run(model.session, None, {"x": np.ones((2, 3, 31, 32), np.float32)}, io_binding=True)
    assert "\n" not in str(e.value)


# ---- perturbations made inside the graph ---------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("method,options,kind", [
    ("occlusion", {"window": 8, "stride": 5}, "boxes"),
    ("occlusion", {"window": 6, "stride": 6, "baseline": "blur"}, "boxes"),
    ("lime", {"num_samples": 60, "segments": "grid"}, "segments"),
    ("lime", {"num_samples": 40, "segments": "grid", "fill": "blur"}, "segments"),
])
def test_in_graph_maps_equal_the_host_path(name, method, options, kind, x):
    host, graph = pair(name)
    a = explain(host, x, method, seed=3, **options)
    b = explain(graph, x, method, seed=3, **options)
    assert ("perturb", kind) in graph._sessions and not host._sessions
    np.testing.assert_array_equal(b.map, a.map)
    assert b.n_queries == a.n_queries
    if method == "lime":
        assert b.extras["r2"] == a.extras["r2"]


@pytest.mark.parametrize("name", VARIANTS)
def test_rise_masks_in_the_graph_give_the_host_scores(name, x):
    host, graph = pair(name)
    rng = np.random.default_rng(0)
    grids = (rng.random((40, 7, 7)) < 0.5).astype(np.float64)
    dy, dx = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    masks = rise_masks(grids, dy, dx, 32, 32)
    zero = np.zeros_like(x)
    want = scores_for_masks(host, x, zero, [masks[:25], masks[25:]], None)
    got = scores_for_masks(graph, x, zero, [GridMasks(grids[:25], dy[:25], dx[:25], masks[:25]),
                                            GridMasks(grids[25:], dy[25:], dx[25:], masks[25:])])
    assert ("perturb", "grids") in graph._sessions
    np.testing.assert_array_equal(got, want)
    assert graph.n_queries == 40


@pytest.mark.parametrize("name", VARIANTS)
def test_shapley_prefixes_in_the_graph_give_the_host_scores(name, x):
    host, graph = pair(name)
    labels = segment(x, "grid", grid=4)
    rank = ranks(draw_permutations(np.random.default_rng(0), 6, 16, True))
    keep = prefix_keep(rank, slice(0, 6 * 15))
    base = make_baseline(x, 0.5)
    want = scores_for_masks(host, x, base, [SegmentMasks(keep, labels).masks()], 4)
    got = scores_for_masks(graph, x, base, [SegmentMasks(keep, labels)], 4)
    assert ("perturb", "segments") in graph._sessions
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method,options", [("rise", {"n_masks": 50}),
                                            ("shapley", {"n_permutations": 2, "grid": 3})])
def test_rise_and_shapley_maps_in_the_graph(method, options, x):
    host, graph = pair("tiny_cnn")
    a, b = explain(host, x, method, seed=2, **options), explain(graph, x, method, seed=2, **options)
    np.testing.assert_array_equal(b.map, a.map)
    assert any(key[0] == "perturb" for key in graph._sessions)


def test_plain_functions_and_cpu_models_keep_the_host_path(x, linear_query):
    model = load_model(model_path("tiny_cnn"), device="cpu")
    assert (model.perturb_in_graph, model.io_binding) == (False, False)
    explain(model, x, "occlusion", window=16, stride=16)
    assert not model._sessions
    exp = explain(linear_query, x, "lime", num_samples=20, segments="grid")
    assert exp.n_queries == 20


def test_in_graph_refused_where_the_graph_cannot_take_it():
    with pytest.raises(ModelInputError, match="batch axis is fixed at 1"):
        load_model(model_path("tiny_cnn_batch1"), device="cpu", dynamic_batch=False,
                   perturb_in_graph=True)
    auto = load_model(model_path("tiny_cnn_batch1"), device="cpu", dynamic_batch=False)
    assert auto.perturb_in_graph is False


def test_in_graph_scores_are_checked_for_nan(x):
    _, graph = pair("tiny_cnn")
    bad = x.copy()
    bad[0, 0, 0] = np.inf
    keep = np.ones((3, 4), bool)
    with pytest.raises(BlackboxError, match="NaN or infinite scores for 3 of 3 inputs"):
        scores_for_masks(graph, bad, np.zeros_like(x),
                         [SegmentMasks(keep, segment(x, "grid", grid=2))], 0)


# ---- device selection and batch budgets -------------------------------------------------------
def test_the_device_variable_decides_what_auto_means(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device("auto") == "auto"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert (resolve_device("auto"), resolve_device("cuda")) == ("cpu", "cuda")
    assert load_model(model_path("tiny_cnn")).provider == CPU
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(DeviceError, match="BLACKBOX_XAI_DEVICE='gpu'"):
        resolve_device("auto")


def test_cuda_sessions_run_in_fp32_unless_tf32_is_asked_for(monkeypatch):
    """ONNX Runtime's CUDA provider runs convolutions in TF32 by default: on an H200 that moved
    the shipped model's logits by 0.012 from the CPU's and saliency to Spearman 0.988. Our CUDA
    sessions ask for FP32; BLACKBOX_XAI_CUDA_TF32=1 gives a deployment's default math, said in
    the provider note. (ONNX Runtime's session is faked: no GPU here.)"""
    from blackbox_xai import runtime

    asked = []

    class Session:
        def __init__(self, model, sess_options=None, providers=()):
            asked.append(providers[0])

        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(runtime, "cuda_plausible", lambda: (True, ""))
    monkeypatch.setattr(runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(runtime.ort, "InferenceSession", Session)
    create = getattr(runtime.create_session, "uncached", runtime.create_session)  # conftest's
    monkeypatch.delenv(runtime.CUDA_TF32_ENV, raising=False)
    assert create(b"", "cuda", None)[1] == CUDA
    monkeypatch.setenv(runtime.CUDA_TF32_ENV, "1")
    assert create(b"", "cuda", None)[1] == f"{CUDA} (TF32)"
    assert asked == [(CUDA, {"use_tf32": "0"}), (CUDA, {"use_tf32": "1"})]
    monkeypatch.setenv(runtime.CUDA_TF32_ENV, "yes")
    with pytest.raises(DeviceError, match="BLACKBOX_XAI_CUDA_TF32='yes'"):
        create(b"", "cuda", None)


def test_the_tf32_flag_asks_the_runs_cuda_sessions_for_tf32(run, monkeypatch):
    """`--tf32` (every command with the model options, and `compare`) sets the variable before
    any session is created; without it the variable is left alone (FP32)."""
    import blackbox_xai.model as model_module
    from blackbox_xai import runtime

    monkeypatch.delenv(runtime.CUDA_TF32_ENV, raising=False)  # restored after the test
    seen = []
    real = model_module.create_session

    def recorded(*args, **kwargs):
        seen.append(os.environ.get(runtime.CUDA_TF32_ENV))
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "create_session", recorded)
    image = EXAMPLES / "cat.jpg"
    assert run("predict", model_path("tiny_cnn"), image, "--preset", "zero-one").exit_code == 0
    assert run("predict", model_path("tiny_cnn"), image, "--preset", "zero-one",
               "--tf32").exit_code == 0
    assert seen[0] is None and seen[-1] == "1"
    monkeypatch.delenv(runtime.CUDA_TF32_ENV)
    assert run("compare", model_path("tiny_cnn"), image, "--against", model_path("tiny_cnn"),
               "--preset", "zero-one", "-o", "window=16", "-o", "stride=16",
               "--tf32").exit_code == 0
    assert seen[-1] == "1"


def test_input_budget_arithmetic():
    assert CPU_INPUT_BUDGET == 512 * 2**20
    assert input_budget(CPU, 100 * GiB) == CPU_INPUT_BUDGET  # the CPU ignores device memory
    assert input_budget(CUDA, None) == CPU_INPUT_BUDGET  # unknown free memory
    assert input_budget(CUDA, 64 * GiB) == 2 * GiB  # 1/32 of the free memory
    assert input_budget(f"{CUDA} (note)", 4 * GiB) == CPU_INPUT_BUDGET  # never below 512 MiB
    item = 3 * 224 * 224 * 4
    assert batch_limit(CPU, item) == 32
    assert batch_limit(CUDA, item, 16 * GiB) == (GiB // 2) // item == 891
    assert batch_limit(CUDA, item, 64 * GiB) == (2 * GiB) // item == 3566
    assert batch_limit(CUDA, item, 130 * GiB) == 4096  # 7244 fit: the cap
    assert batch_limit(CUDA, 3 * 32 * 32 * 4, 130 * GiB) == 4096  # the cap
    assert batch_limit(CUDA, 10 * GiB, 8 * GiB) == 1


def test_the_model_takes_its_budget_from_the_free_device_memory(monkeypatch):
    import blackbox_xai.model as model_module

    model = load_model(model_path("tiny_cnn"), device="cpu", batch_size=4)
    item = 3 * 32 * 32 * 4
    model.set_batch_size(10**6)
    assert model.batch_size == CPU_INPUT_BUDGET // item
    monkeypatch.setattr(model, "provider", CUDA)
    monkeypatch.setattr(model_module, "cuda_free_memory", lambda: 96 * GiB)
    model.set_batch_size(10**6)
    assert model.batch_size == 3 * GiB // item
    probed = []
    monkeypatch.setattr(model_module, "batch_limit",
                        lambda provider, per_item, free: probed.append((provider, per_item, free)) or 2)
    assert model.probe_batch_size() in (1, 2)
    assert probed == [(CUDA, item, 96 * GiB)]


def test_on_cuda_every_run_of_a_session_has_one_batch_shape(x, monkeypatch):
    """A new batch shape rebuilds every Conv's cuDNN plans on CUDA (0.1-1.1 s a switch on an
    H200, against 25 ms for a run at batch 128): a session's short chunks and single queries are
    padded to the most rows it has run with (the CUDA session simulated on the CPU provider);
    scores are unchanged."""
    import blackbox_xai.model as model_module

    model = load_model(model_path("tiny_cnn"), device="cpu", batch_size=4)
    inputs = np.stack([x * (1 + i / 10) for i in range(10)])
    expected_all, expected_one = model(inputs), model(inputs[:1])
    rows = []
    real = model_module.run

    def recorded(session, outputs, feeds, *args, **kwargs):
        if "seed" in feeds or not gradients[0]:  # the gradient check's forward runs aside
            rows.append(len(feeds[model.input.name]))
        return real(session, outputs, feeds, *args, **kwargs)

    gradients = [False]

    monkeypatch.setattr(model_module, "run", recorded)
    monkeypatch.setattr(model_module, "session_device", lambda session: "cuda")
    np.testing.assert_array_equal(model(inputs), expected_all)
    np.testing.assert_array_equal(model(inputs[:1]), expected_one)
    s = explain(model, x, "occlusion", window=16, stride=8)
    assert rows[:4] == [4, 4, 4, 4] and set(rows) == {4} and s.n_queries == 10  # 9 windows + x
    rows.clear()  # a session only ever asked one row at a time is not padded
    gradients[0] = True
    model.input_gradient(x[None], one_hot(1, model.num_classes, 0))
    model.input_gradient(x[None], one_hot(1, model.num_classes, 1))
    assert rows == [1, 1]


@pytest.mark.parametrize("method, options", [
    ("occlusion", {"window": 16, "stride": 8}), ("rise", {"n_masks": 11}),
    ("lime", {"num_samples": 11, "segments": "grid"}), ("shapley", {"n_permutations": 2}),
])
def test_on_cuda_perturbations_in_the_graph_run_at_one_shape_and_give_the_same_map(
        x, monkeypatch, method, options):
    """CUDA's default path sends mask parameters to a rewritten graph: its short chunks are
    padded too (the parameters' last row repeated) and the map is the unpadded one (CUDA
    simulated on the CPU provider, which runs the same graphs)."""
    import blackbox_xai.model as model_module

    model = load_model(model_path("tiny_cnn"), device="cpu", batch_size=4, perturb_in_graph=True)
    expected = explain(model, x, method, seed=2, target=1, **options).map
    rows = []
    real = model_module.run

    def recorded(session, outputs, feeds, *args, **kwargs):
        rows.append((id(session), len(next(iter(feeds.values())))))
        return real(session, outputs, feeds, *args, **kwargs)

    monkeypatch.setattr(model_module, "run", recorded)
    monkeypatch.setattr(model_module, "session_device", lambda session: "cuda")
    np.testing.assert_array_equal(explain(model, x, method, seed=2, target=1, **options).map,
                                  expected)
    sessions = {s for s, _ in rows}
    assert all(len({n for s, n in rows if s == one}) == 1 for one in sessions), rows
    assert any(n == 4 for _, n in rows)
