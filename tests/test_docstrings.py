"""The API reference: every public function and class of losslab has a docstring; ``__all__`` lists them."""

import importlib
import inspect
import pydoc

import pytest

import losslab

# Modules reachable from ``losslab.__all__``, plus the curvature and plot submodules.
MODULES = sorted(
    {f"losslab.{name}" for name in losslab.__all__ if inspect.ismodule(getattr(losslab, name))}
    | {f"losslab.curvature.{m}" for m in ("api", "dense", "density", "eigen", "operators", "trace", "backprop")}
    | {f"losslab.plot.{m}" for m in ("natural", "sharpness", "spectrum", "surface", "training")}
    | {"losslab.plot", "losslab.objective"}
)
# The audited API (issue 8): here methods and properties are documented too and ``__all__`` is complete.
AUDITED = [
    "losslab.correlation",
    "losslab.curvature",
    "losslab.curvature.api",
    "losslab.curvature.dense",
    "losslab.curvature.density",
    "losslab.curvature.eigen",
    "losslab.curvature.operators",
    "losslab.probes",
    "losslab.layers",
    "losslab.trees",
    "losslab.curvature.kfac",
    "losslab.curvature.solve",
    "losslab.curvature.base",
    "losslab.curvature.trace",
    "losslab.directions",
    "losslab.kfac",
    "losslab.natural",
    "losslab.results",
    "losslab.sharpness",
    "losslab.surface",
    "losslab.symmetry",
    "losslab.train",
    "losslab.weights",
]


def defined_here(module):
    """Public functions and classes: a package's (curvature, plot) ``__all__``; every public one a module defines."""
    package = module.__name__ in ("losslab.curvature", "losslab.plot")
    names = module.__all__ if package else [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and (package or obj.__module__ == module.__name__):
            yield name, obj


def own_doc(obj) -> str:
    """The object's own docstring, not the one NamedTuple / dataclass generate (``Name(field, ...)``)."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and ("__doc__" not in vars(obj) or doc.startswith(f"{obj.__name__}(")):
        return ""
    return doc.strip()


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_has_a_docstring(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    missing = [n for n, obj in defined_here(module) if not own_doc(obj)]
    assert not missing, f"{name}: no docstring for {missing}"


@pytest.mark.parametrize("name", AUDITED)
def test_audited_methods_documented_and_all_complete(name):
    module = importlib.import_module(name)
    missing = []
    for cls_name, cls in defined_here(module):
        if not inspect.isclass(cls):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if inspect.isfunction(fn) and not (fn.__doc__ or "").strip():
                missing.append(f"{cls_name}.{attr}")
    assert not missing, f"{name}: no docstring for {missing}"
    exported = getattr(module, "__all__", None)
    if name in ("losslab.train", "losslab.results"):
        return  # no __all__: every public name is API
    assert exported is not None, f"{name} has no __all__"
    assert all(hasattr(module, n) for n in exported), f"{name}.__all__ names something that does not exist"
    if not name.endswith("curvature"):
        own = {
            n for n, obj in vars(module).items() if not n.startswith("_") and getattr(obj, "__module__", None) == name
        }
        own = {n for n in own if inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))}
        assert own <= set(exported), f"{name}.__all__ misses {sorted(own - set(exported))}"


def test_curvature_package_exports_every_submodule_api():
    from losslab import curvature

    helpers = {"shard_probes", "check_probe_mesh", "check_num_steps", "probe_vector", "batched_over_keys",
               "check_operator", "restrict", "sampled_nll_grads", "Select"}
    for sub in ("api", "dense", "density", "eigen", "operators", "trace", "solve"):
        module = importlib.import_module(f"losslab.curvature.{sub}")
        public = [n for n in module.__all__ if not n.isupper() and n not in helpers]
        assert set(public) <= set(curvature.__all__), f"curvature.__all__ misses {set(public) - set(curvature.__all__)}"


def test_help_on_curvature_reads_well():
    text = pydoc.render_doc(losslab.curvature, renderer=pydoc.plaintext)
    description = text[text.index("DESCRIPTION") : text.index("PACKAGE CONTENTS")]
    for name in ("hessian_trace", "hessian_operator", "lanczos", "spectral_density", "matvec"):
        assert name in description
    for name in ("TraceEstimate", "hutchpp_trace", "top_eigenpairs", "to_dense"):
        assert f"\n    {name}(" in text or f"class {name}(" in text
