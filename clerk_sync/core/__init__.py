"""The core every process shares: settings, logging, JSON reading and the queue contract
(task names, message arguments, the ledger of accepted events). Imports only ``models`` and
public library APIs; ``ingress``, ``workers`` and the command line build on it."""
