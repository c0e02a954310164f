"""Typed, versioned messages between hubbub processes: one module per message family, all built
on ``hubbub.contracts.base``."""

from hubbub.contracts.base import Contract, ContractError, Family, Json, contract


__all__ = ["Contract", "ContractError", "Family", "Json", "contract"]
