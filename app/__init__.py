"""The histokg web app (FastAPI): ``app.main.create_app(index_dir)``; run it with ``histokg serve``."""
