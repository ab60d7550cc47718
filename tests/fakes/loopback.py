"""The fakes' loopback server: now the kit's (``tender_kit.fakes``), shared with plugin
authors; kept here so Tender's fakes import it as before."""

from tender_kit.fakes import JsonHandler, LoopbackFake, QuietServer

__all__ = ["JsonHandler", "LoopbackFake", "QuietServer"]
