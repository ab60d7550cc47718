"""Local HTTP fakes of payment providers, one package per provider, for tests."""
