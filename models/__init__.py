"""The data layer: tables, engine, token encryption, migrations, repository, key rotation.

Submodules are imported where they are used (``models.engine``, ``models.repository``...) rather
than re-exported here, so importing one piece — say the crypto for the web callback — does not
pull in Alembic or every table.
"""
