# Kept only so that `pip install -e .` works with older setuptools; metadata lives in setup.cfg.
from setuptools import setup

setup()
