"""Wire models of the Weave trace-server protocol (msgspec Structs) and their encoding.

Data and codecs: the same bytes whichever process encodes them (producer,
sender, servers, clients); the C encoder is used where it is built.
May import: ``common``, ``native``.
"""

from engine.wire._codec import decode, encode, encoder, strict_encoder, utcnow, uuid7
from engine.wire.calls import *  # noqa: F403
from engine.wire.calls import __all__ as _calls_all

__all__ = ["decode", "encode", "encoder", "strict_encoder", "utcnow", "uuid7", *_calls_all]
from engine.wire.query import *  # noqa: E402, F403
from engine.wire.query import __all__ as _query_all  # noqa: E402

__all__ += _query_all
from engine.wire._base import Query  # noqa: E402
from engine.wire._codec import uuid7_bytes  # noqa: E402
from engine.wire.costs import *  # noqa: E402, F403
from engine.wire.costs import __all__ as _costs_all  # noqa: E402
from engine.wire.feedback import *  # noqa: E402, F403
from engine.wire.feedback import __all__ as _feedback_all  # noqa: E402
from engine.wire.files import *  # noqa: E402, F403
from engine.wire.files import __all__ as _files_all  # noqa: E402
from engine.wire.labels import *  # noqa: E402, F403
from engine.wire.labels import __all__ as _labels_all  # noqa: E402
from engine.wire.misc import *  # noqa: E402, F403
from engine.wire.misc import __all__ as _misc_all  # noqa: E402
from engine.wire.objects import *  # noqa: E402, F403
from engine.wire.objects import __all__ as _objects_all  # noqa: E402
from engine.wire.refs import *  # noqa: E402, F403
from engine.wire.refs import __all__ as _refs_all  # noqa: E402
from engine.wire.routes import EXTRA_ROUTES, ROUTES, Route  # noqa: E402
from engine.wire.tables import *  # noqa: E402, F403
from engine.wire.tables import __all__ as _tables_all  # noqa: E402

__all__ += ["Query", "uuid7_bytes", "Route", "ROUTES", "EXTRA_ROUTES"]
__all__ += [*_costs_all, *_feedback_all, *_files_all, *_labels_all, *_misc_all, *_objects_all, *_refs_all]
__all__ += _tables_all
