"""Why a Kafka client could not bootstrap, in one line.

kafka-python (3.0.12) retries a failed bootstrap until its timeout and then says only
"Unable to bootstrap": a refused password, an untrusted certificate and a broker that is down
all look alike. Worse, it mostly loses the broker's SASL error response, which Kafka sends
just before closing the connection (its transport discards data read together with the end
of the stream), so the reason is often not even in its log. This probe goes through the same steps
once, with aiokafka (which faust brings): TCP connect, TLS handshake, API versions, SASL;
the first step that fails is the line the user reads.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from infra.settings import SettingsError, ssl_context

# OpenSSL verify codes that mean "signed by a CA this client does not have"
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}
# TLS alerts a broker sends a client whose certificate is missing or not signed by its CA
# (Java answers a missing one with bad_certificate, not TLS 1.3's certificate_required)
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN")


def why_unreachable(kafka_config: dict[str, Any], timeout: float = 10.0) -> str | None:
    """The reason the first failing bootstrap server gives, or None if each of them
    connects and authenticates, or nothing listens there, or it does not answer within
    ``timeout`` (the caller's own "cannot reach" then says as much as there is to say)."""
    try:
        asyncio.get_running_loop()
        return None  # inside an event loop (faust): no nested loop
    except RuntimeError:
        pass
    for server in kafka_config["bootstrap_servers"]:
        host, _, port = str(server).rpartition(":")
        if not port.isdigit():
            continue
        reason = asyncio.run(_probe(host or "localhost", int(port), kafka_config, timeout))
        if reason is not None:
            return reason
    return None


async def _probe(host: str, port: int, config: dict[str, Any], timeout: float) -> str | None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.protocol.metadata import MetadataRequest

    where = f"Kafka at {host}:{port}"
    protocol = str(config.get("security_protocol", "PLAINTEXT"))
    mechanism = config.get("sasl_mechanism")
    user = config.get("sasl_plain_username")
    context = None
    if protocol.endswith("SSL"):
        try:
            context = ssl_context(config.get("ssl_cafile"), config.get("ssl_certfile"),
                                  config.get("ssl_keyfile"))
        except SettingsError as exc:
            return str(exc)
    try:
        conn = await asyncio.wait_for(create_conn(
            # the client's own request timeout comes after ours: a silent broker is None
            host, port, client_id="motcua-probe", request_timeout_ms=int(timeout * 1000) + 5000,
            ssl_context=context, security_protocol=protocol, sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password=config.get("sasl_plain_password")), timeout)
        try:  # a first real request: a SASL listener closes on it when no SASL was done
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
        finally:
            conn.close()
    except TimeoutError:
        return None
    except SaslAuthenticationFailed as exc:
        detail = str(exc).removeprefix("[Error 58] SaslAuthenticationFailed: ")
        return f"{where} refused the credentials of user {user!r} (SASL {mechanism}): {detail}"
    except UnsupportedSaslMechanismError:
        return (f"{where} does not accept SASL mechanism {mechanism} "
                "(MOTCUA_KAFKA_SASL_MECHANISM)")
    except IllegalSaslStateError:
        return (f"{where} refused the SASL handshake: that listener does not use SASL "
                f"(MOTCUA_KAFKA_SECURITY_PROTOCOL={protocol})")
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason or str(exc)
        hint = ""
        if exc.verify_code in _UNKNOWN_ISSUER:
            cafile = config.get("ssl_cafile")
            hint = ("; set MOTCUA_KAFKA_SSL_CAFILE to the PEM file of the CA that signed it"
                    if not cafile else f"; MOTCUA_KAFKA_SSL_CAFILE={cafile} does not hold the "
                                       "CA that signed it")
        return f"{where} presented a TLS certificate this client does not trust ({reason}){hint}"
    except ssl.SSLError as exc:
        return _tls_failed(where, protocol, exc, config.get("ssl_certfile"))
    except ConnectionRefusedError:
        return None  # nothing listens: the caller's "cannot reach" says it
    except (KafkaError, OSError) as exc:
        cause = _ssl_cause(exc)  # TLS 1.3: a refused client certificate arrives as an alert
        if cause is not None:  # after the handshake, on the first read
            return _tls_failed(where, protocol, cause, config.get("ssl_certfile"))
        text = str(exc)
        name = type(exc).__name__
        shown = text if text.startswith(name) else f"{name}: {text}" if text else name
        return (f"{where} closed the connection ({shown}): does that listener speak "
                f"{protocol} (MOTCUA_KAFKA_SECURITY_PROTOCOL)?")
    return None


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_failed(where: str, protocol: str, exc: ssl.SSLError, certfile: Any) -> str:
    reason = str(exc.reason or exc)
    if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
        if not certfile:
            return (f"{where} wants a client certificate ({reason}): set "
                    "MOTCUA_KAFKA_SSL_CERTFILE (and _KEYFILE)")
        return (f"{where} refused the client certificate MOTCUA_KAFKA_SSL_CERTFILE="
                f"{certfile} ({reason})")
    return (f"TLS with {where} failed ({reason}): does that listener speak {protocol} "
            "(MOTCUA_KAFKA_SECURITY_PROTOCOL)?")
