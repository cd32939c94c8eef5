"""Switchboard provisioning layer.

- ``provisioning.model``: the data model (frozen dataclasses): ``Directory``
  and its tables, ``Destination``, ``Binding``.  Pure; safe for ``routing``.
- ``provisioning.directory``: ``load_directory(path)`` / ``parse_directory(data)``
  validate the directory file (``DirectoryError`` lists every problem).
- ``provisioning.store``: the async ``Store`` (``SQLiteStore``, ``PostgresStore``,
  ``open_store(url, data_dir)``).
- ``provisioning.apply``: ``apply_file(...)`` and ``format_report(...)``.

Nothing is imported here, so importing the model does not load database drivers.
"""
