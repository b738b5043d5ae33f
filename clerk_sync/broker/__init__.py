"""The one package that extends Celery, kombu, billiard and redis-py beyond their public APIs.

See README.md beside this file: each private name used, what it buys (measured in ``bench/``),
and the test that fails if an upgrade changes it.
"""
