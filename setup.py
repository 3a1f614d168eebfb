"""Leave the unit tests that live beside the code (rrproxy/**/test_*.py) out of the wheel.

Everything else about the build is in pyproject.toml. setuptools has no setting that drops
a .py module from a package (exclude-package-data only filters data files), so build_py's
module discovery is filtered here. Editable installs still see every module.
"""

from fnmatch import fnmatch

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithoutTests(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [
            (pkg, mod, path)
            for pkg, mod, path in modules
            if not (fnmatch(mod, "test_*") or mod == "conftest")
        ]


setup(cmdclass={"build_py": BuildPyWithoutTests})
