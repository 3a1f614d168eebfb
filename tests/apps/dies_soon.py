"""Imports fine and reports ready, then dies a moment later: a restart storm."""

import os
import threading

threading.Timer(0.2, lambda: os._exit(1)).start()


async def handler(request):
    return "never for long"
