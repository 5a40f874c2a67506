"""Asynchronous buffered aggregation (FedBuff, Nguyen et al. 2022): `[coordinator] mode = "async"`.

    config.py     [coordinator.async] and the settings async mode refuses, by name
    staleness.py  staleness weights and the buffered mean (pure numpy)
    machine.py    the buffer's transition table: dispatch, admit by staleness, flush (no I/O)
    journal.py    in-flight tasks and buffered updates, durable (SQLite) or in memory
    waiting.py    why an open buffer cannot fill now (the line logged once per buffer)
    server.py     AsyncCoordinator: the shell that executes the table's actions
"""
