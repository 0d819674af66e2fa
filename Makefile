# The front door. `make demo` and `make test` install what they need on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
SOLC_VERSION := 0.8.28
SOLC := .solcx/solc-v$(SOLC_VERSION)
NETWORK ?= avalanche:anvil
ANVIL_PORT ?= 8545

# py-solc-x and ape-solidity find the compiler here, never under $HOME; anvil and solcjs come from npm.
export SOLCX_BINARY_PATH := $(CURDIR)/.solcx
export PATH := $(BIN):$(CURDIR)/node_modules/.bin:$(PATH)

CONTRACTS := $(shell find contracts -name '*.sol')

.PHONY: help setup test demo lint bench gas-snapshot anvil deploy clean

help:
	@echo "make setup    create .venv, install pinned Python and npm packages, the solc wrapper, compile"
	@echo "make demo     the DLE devnet (anvil + every node as a process): buy, pay, exit, conservation check"
	@echo "make test     run the test suite (contracts, deploy on the embedded chain and on anvil, gas)"
	@echo "make lint     ruff, mypy (offchain, dle_vm), slither (contracts)"
	@echo "make bench    benchmarks; writes nothing but prints figures"
	@echo "make anvil    run the project's anvil node on 127.0.0.1:$(ANVIL_PORT), chain id 43112"
	@echo "make deploy   ape run deploy --network $(NETWORK) (ACCOUNT=alias for public networks)"

setup: .stamps/python .stamps/npm $(SOLC) .build/__local__.json

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

.stamps/python: $(VENV)/bin/python pyproject.toml requirements.lock
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@mkdir -p .stamps && touch $@

.stamps/npm: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@mkdir -p .stamps && touch $@

$(SOLC): toolchain/solcjs-wrapper.js
	@mkdir -p .solcx
	ln -sf ../toolchain/solcjs-wrapper.js $@

.build/__local__.json: .stamps/python .stamps/npm $(SOLC) ape-config.yaml $(CONTRACTS)
	$(BIN)/ape compile
	@touch $@

test: setup
	bash scripts/ensure_postgres.sh
	$(BIN)/python -m pytest -q

# The DLE devnet in .devnet/ (anvil, the contracts, every node its own process on 127.0.0.1), the
# scenario of offchain/devnet/demo.py, then everything stopped again (also when the scenario fails);
# then SI (offchain/devnet/si_demo.py): a message to an offline person, received on reconnection, the bill.
demo: setup
	$(BIN)/conet devnet up
	$(BIN)/python -m offchain.devnet.demo || { $(BIN)/conet devnet down; exit 1; }
	$(BIN)/python -m offchain.devnet.odex_demo || { $(BIN)/conet devnet down; exit 1; }
	$(BIN)/conet devnet down
	$(BIN)/python -m offchain.devnet.si_demo

lint: setup
	$(BIN)/ruff check offchain dle_vm scripts tests bench toolchain
	$(BIN)/ruff format --check offchain dle_vm scripts tests bench toolchain
	$(BIN)/mypy
	$(BIN)/python toolchain/standard_json.py .build/standard-input.json
	$(BIN)/python toolchain/slither_check.py $(BIN)/slither .build/standard-input.json --compile-force-framework solc-json --solc $(SOLC) \
		--config-file slither.config.json

bench: setup
	$(BIN)/python bench/gas.py
	$(BIN)/python bench/dle_engines.py
	$(BIN)/python bench/si_envelope.py
	$(BIN)/python bench/si.py
	$(BIN)/python bench/dle.py

gas-snapshot: setup
	$(BIN)/python bench/gas.py --write

anvil: setup
	$(BIN)/conet devnet anvil --port $(ANVIL_PORT)

deploy: setup
	$(BIN)/ape run deploy --network $(NETWORK) $(if $(ACCOUNT),--account $(ACCOUNT))

clean:
	rm -rf .build .stamps .solcx crytic-export
