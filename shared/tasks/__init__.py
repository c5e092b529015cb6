"""Task functions shared by the functions: plain ``def``/``async def`` for ``add_task``."""
