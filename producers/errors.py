"""Errors the dossier service raises for a request it refuses. Nothing is written when one is
raised: each names the dossier or field, and what was asked."""

from __future__ import annotations

from schemas.errors import MotcuaError


class ServiceError(MotcuaError):
    """A request to the dossier service that cannot be carried out."""


class InvalidRequest(ServiceError):
    """A field of the request is wrong (names the field)."""


class DossierNotFound(ServiceError):
    """No dossier with that id in this store."""


class DossierExists(ServiceError):
    """A dossier id that is already in use."""


class DossierTransitionError(ServiceError):
    """The dossier's status does not allow what was asked."""
