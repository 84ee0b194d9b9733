.PHONY: bootstrap demo test lint typecheck pytest bench clean

VENV := .venv/bin

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(VENV)/python -m cdc.demo

test: bootstrap
	$(VENV)/ruff check cdc tests bench
	$(VENV)/mypy cdc
	$(VENV)/pytest -q

bench: bootstrap
	$(VENV)/python -m bench.bench_relay
	$(VENV)/python -m bench.bench_writeback
	$(VENV)/python -m bench.bench_case_stats
	$(VENV)/python -m bench.bench_consumer

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
