"""Build hooks (metadata is in pyproject.toml): the optional C accelerator and the weave hook.

``engine.native._native`` is ``optional=True``: on a machine without a C compiler the install
still succeeds and the package runs on its pure-Python ring and id code (slower, same bytes).

``engine-weave.pth`` goes to the root of site-packages, in wheels (``build_py``) and in
editable installs (``editable_wheel``): it makes ``ENGINE_WEAVE=1`` route weave through the
engine without an import in the program (``_engine_weave_hook``). When the variable is not
set, it costs one dictionary look-up at interpreter start.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "engine-weave.pth"
PTH_LINE = "import os; os.environ.get('ENGINE_WEAVE') and __import__('_engine_weave_hook')\n"


class BuildPyWithPth(build_py):
    """Wheels: the ``.pth`` beside the packages, at the root of the wheel."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if self.editable_mode else [str(Path(self.build_lib, PTH_NAME))]
        return super().get_outputs(include_bytecode) + extra


class _StrategyWithPth:
    """Wraps setuptools' editable strategy (which writes only its own files to the wheel)."""

    def __init__(self, strategy) -> None:
        self._strategy = strategy

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping) -> None:
        self._strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_LINE.encode())


class EditableWheelWithPth(editable_wheel):
    """Editable installs: the same ``.pth`` in the editable wheel."""

    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWithPth(super()._select_strategy(name, tag, build_lib))


setup(
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    ext_modules=[
        Extension(
            "engine.native._native",
            sources=[f"engine/native/{name}.c" for name in (
                "_module", "_writer", "_json", "_call_items", "_calls", "_parse", "_ids",
                "_iso", "_scan", "_rows")],
            depends=[f"engine/native/{name}.h" for name in (
                "_format", "_writer", "_json", "_call_items", "_calls", "_parse", "_ids",
                "_iso", "_scan", "_rows")],
            # one extension of several files: only PyInit__native leaves it, so calls
            # between its files are direct (no PLT, as within one file)
            extra_compile_args=["-O3", "-std=c11", "-D_GNU_SOURCE", "-fvisibility=hidden"],
            optional=True,
        )
    ],
)
