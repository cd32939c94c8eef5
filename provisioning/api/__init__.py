"""The admin API (``/api/v1`` on the admin HTTP listener).

- ``errors``: :class:`ApiError`, every refusal as ``{"errors": [{"path", "message"}]}``.
- ``auth``: web passwords (argon2), sign-in tokens, API keys, TOTP, the sign-in limiter.
- ``policy``: the five roles and what each may read and change.
- ``resources``: the directory's tables as resources: every write is the live
  directory with the change applied, validated whole by ``parse_directory``
  and stored with a new revision (the ETag).
- ``schema``: the JSON Schema of each table and the OpenAPI document, derived
  from the validator's declarations.
- ``http``: thin aiohttp handlers over the above; ``setup(app, store, live)``.

Plain functions and classes take a store and a :class:`~provisioning.api.live.Live`
view of the running engine, so they are tested without HTTP; the engine
provides its view in ``engine/shell/admin_api.py``.
"""
