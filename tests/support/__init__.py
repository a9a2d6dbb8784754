"""Test support: models, fixtures, worker scripts and servers the tests use."""
