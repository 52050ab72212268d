"""The schema (Canvas's tables, tep's own), engine and session helpers. Knows nothing above it."""

from sqlalchemy import Table

from models.base import (
    MAX_ID,
    TEP_SCHEMA,
    UTC,
    AnySelect,
    Base,
    CanvasTimestamp,
    UTCDateTime,
    utcnow,
)
from models.canvas import (
    ACCOUNT_ADMIN_ROLE,
    ACCOUNT_MEMBERSHIP_ROLE,
    BUILT_IN_ROLES,
    CANVAS_PAIRING_STATES,
    DEFAULT_ENDING_ENROLLMENT_STATE,
    DEFAULT_TERM_NAME,
    DUMMY_ROOT_ACCOUNT_ID,
    ENDING_ENROLLMENT_STATES,
    ENROLLMENT_STATES,
    ENROLLMENT_TYPES,
    LIVE_ENROLLMENT_STATES,
    PAIRING_STATES,
    Account,
    AccountUser,
    CommunicationChannel,
    Course,
    CourseSection,
    Enrollment,
    EnrollmentState,
    EnrollmentTerm,
    Pseudonym,
    Role,
    RoleOverride,
    TemporaryEnrollmentPairing,
    User,
    live,
    pairing_not_deleted,
    real_accounts,
)
from models.db import (
    CANVAS_TABLES_EXISTING,
    CANVAS_TABLES_MANAGED,
    THROUGH_CANVAS,
    Schemas,
    make_engine,
    make_sessionmaker,
    normalize_url,
    through_canvas,
    transaction,
)
from models.notify import (
    NOTICE_BEFORE_END,
    NOTICE_ENDED,
    NOTICE_FAILED,
    NOTICE_PENDING,
    NOTICE_SENT,
    NOTICE_SKIPPED,
    Notice,
    WebhookDelivery,
    WebhookReceiver,
)
from models.tep import (
    ApiToken,
    CanvasCommand,
    CanvasSync,
    DiscoveryCursor,
    EnrollmentDeadline,
    ExpiryTimer,
    PairingEnd,
    StateChange,
    SweepRun,
)

CANVAS_TABLE_CLASSES = (
    Account,
    User,
    Pseudonym,
    CommunicationChannel,
    EnrollmentTerm,
    Course,
    CourseSection,
    Role,
    RoleOverride,
    AccountUser,
    TemporaryEnrollmentPairing,
    Enrollment,
    EnrollmentState,
)


def canvas_tables() -> list[str]:
    """The Canvas tables tep maps (what `managed` mode creates)."""
    return [model.__tablename__ for model in CANVAS_TABLE_CLASSES]


def canvas_table_objects() -> list[Table]:
    """The same, as `Table` objects (their mapped columns)."""
    return [Base.metadata.tables[name] for name in canvas_tables()]


def tep_tables() -> list[str]:
    """tep's own tables (`TEP_SCHEMA`), in dependency order."""
    return [t.name for t in Base.metadata.sorted_tables if t.schema == TEP_SCHEMA]


__all__ = [
    "ACCOUNT_ADMIN_ROLE",
    "ACCOUNT_MEMBERSHIP_ROLE",
    "BUILT_IN_ROLES",
    "CANVAS_PAIRING_STATES",
    "CANVAS_TABLES_EXISTING",
    "CANVAS_TABLES_MANAGED",
    "CANVAS_TABLE_CLASSES",
    "DEFAULT_ENDING_ENROLLMENT_STATE",
    "DEFAULT_TERM_NAME",
    "DUMMY_ROOT_ACCOUNT_ID",
    "ENDING_ENROLLMENT_STATES",
    "ENROLLMENT_STATES",
    "ENROLLMENT_TYPES",
    "LIVE_ENROLLMENT_STATES",
    "MAX_ID",
    "NOTICE_BEFORE_END",
    "NOTICE_ENDED",
    "NOTICE_FAILED",
    "NOTICE_PENDING",
    "NOTICE_SENT",
    "NOTICE_SKIPPED",
    "PAIRING_STATES",
    "TEP_SCHEMA",
    "THROUGH_CANVAS",
    "UTC",
    "Account",
    "AccountUser",
    "AnySelect",
    "ApiToken",
    "Base",
    "CanvasCommand",
    "CanvasSync",
    "CanvasTimestamp",
    "CommunicationChannel",
    "Course",
    "CourseSection",
    "DiscoveryCursor",
    "Enrollment",
    "EnrollmentDeadline",
    "EnrollmentState",
    "EnrollmentTerm",
    "ExpiryTimer",
    "Notice",
    "PairingEnd",
    "Pseudonym",
    "Role",
    "RoleOverride",
    "Schemas",
    "StateChange",
    "SweepRun",
    "TemporaryEnrollmentPairing",
    "UTCDateTime",
    "User",
    "WebhookDelivery",
    "WebhookReceiver",
    "canvas_table_objects",
    "canvas_tables",
    "live",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "pairing_not_deleted",
    "real_accounts",
    "tep_tables",
    "through_canvas",
    "transaction",
    "utcnow",
]
