.PHONY: bootstrap demo check test test-slow test-deploy constraints lint typecheck pytest bench clean

VENV := .venv/bin

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(VENV)/python -m devkit.demo

# Seconds, no servers: lint, types and tests/unit (pure logic: checkpoint, routes, keys,
# the error policy, contracts against their lean validators, no import cycle).
check: bootstrap
	$(VENV)/ruff check cdc devkit tests bench
	$(VENV)/mypy cdc devkit
	HYPOTHESIS_PROFILE=quick $(VENV)/pytest -q -p no:cacheprovider tests/unit

# Everything but the long fault cases and the podman stack: ruff, mypy, pytest on real servers.
test: bootstrap
	$(VENV)/ruff check cdc devkit tests bench
	$(VENV)/mypy cdc devkit
	$(VENV)/pytest -q -m 'not deploy and not slow'

# The long fault cases (marker slow): SIGKILLs, Redis refusing writes, cut links, failovers.
test-slow: bootstrap
	$(VENV)/pytest -q -m 'slow and not deploy'

# Build the images and start the compose stack with podman; prove streaming, handover, stop.
test-deploy: bootstrap
	@scripts/bootstrap-deploy
	$(VENV)/pytest -q -s -p no:cacheprovider -m deploy tests/test_deploy_stack.py

# Re-resolve docker/constraints.txt (the images' pinned dependencies) from pyproject.toml.
constraints:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q --disable-pip-version-check .
	{ echo "# Pinned Python dependencies of the images, resolved from pyproject.toml. Refresh: make constraints"; \
	  .venv-lock/bin/pip freeze --exclude axiom-cdc; } > docker/constraints.txt
	rm -rf .venv-lock

bench: bootstrap
	$(VENV)/python -m bench.bench_relay
	$(VENV)/python -m bench.bench_writeback
	$(VENV)/python -m bench.bench_case_stats
	$(VENV)/python -m bench.bench_consumer

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
