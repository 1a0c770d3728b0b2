"""Fake vendor servers: `base` is the machinery they share; each vendor's fake lives beside its plugin.

A first-party plugin keeps its fake in its own package (``plugins/ce_splunk/fake.py``), as a
third-party plugin does; they all build on `ce_daemon.testing.fakes.base.FakeHttpServer`.
"""
