"""Fast unit tier: one behaviour per test, real processes and sockets, no SSH lab except
``test_argv_sequence``."""
