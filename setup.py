"""Build hook for the optional C accelerator ``engine.native._native`` (metadata is in pyproject.toml).

``optional=True``: on a machine without a C compiler the install still succeeds and the
package runs on its pure-Python ring and id code (slower, same bytes).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "engine.native._native",
            sources=["engine/native/_native.c", "engine/native/_native_json.c"],
            depends=["engine/native/_native_json.h"],
            extra_compile_args=["-O3", "-std=c11", "-D_GNU_SOURCE"],
            optional=True,
        )
    ]
)
