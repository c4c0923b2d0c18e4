//! How the room service's errors reach a Starling client: one documented
//! error code each (`docs/protocol.md`, "Errors"), with `retry_after_ms`
//! on the retryable ones.

use crate::forward::PublishError;
use crate::protocol::{ErrorBody, ErrorCode};
use crate::service::ServiceError;

/// The request an error answers (a few messages depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorContext {
    Join,
    Leave,
    Publish,
    Presence,
}

/// When to retry a publish held back behind a refused one (G9): after the
/// refused one's own retry (at most 200 ms), so the order is kept.
const HELD_BACK_RETRY_MS: u64 = 250;

/// The error reply for `error`.
pub fn error_body(error: ServiceError, context: ErrorContext) -> ErrorBody {
    let message = error.to_string();
    match error {
        ServiceError::UnknownNamespace(_)
        | ServiceError::PresenceOff(_)
        | ServiceError::ServerPublishesOnly(_)
        | ServiceError::TooManyRooms { .. }
        | ServiceError::RoomFull { .. } => ErrorBody::new(ErrorCode::Forbidden, message),
        ServiceError::DataTooLarge { .. } | ServiceError::MetaTooLarge { .. } => {
            ErrorBody::new(ErrorCode::TooLarge, message)
        }
        ServiceError::NotJoined if context == ErrorContext::Publish => {
            ErrorBody::new(ErrorCode::NotJoined, "join the room before publishing")
        }
        ServiceError::NotJoined => ErrorBody::new(ErrorCode::NotJoined, message),
        ServiceError::Unavailable(_) => ErrorBody::new(ErrorCode::Unavailable, message).retry_after(500),
        ServiceError::HeldBack => {
            ErrorBody::new(ErrorCode::Unavailable, message).retry_after(HELD_BACK_RETRY_MS)
        }
        ServiceError::Publish(error) => publish_error_body(&error),
    }
}

/// A publish that could not be sequenced. Retryable reasons are
/// `unavailable` with a hint of when to retry; the message says which.
pub fn publish_error_body(error: &PublishError) -> ErrorBody {
    let retry_after_ms = match error {
        // The room's table entry is still on its way to the owner.
        PublishError::NoMembers => {
            return ErrorBody::new(ErrorCode::Unavailable, "room is not ready").retry_after(100)
        }
        // The new owner is known; a retry goes there.
        PublishError::OwnerMoved { .. } | PublishError::TakingOver => 50,
        PublishError::OwnerUnreachable { .. }
        | PublishError::OwnerBehind
        | PublishError::TimedOut
        | PublishError::NotReplicated => 200,
        PublishError::OffsetsExhausted | PublishError::Refused(_) | PublishError::NotAuthorized => {
            return ErrorBody::new(ErrorCode::Internal, error.to_string())
        }
    };
    ErrorBody::new(ErrorCode::Unavailable, error.to_string()).retry_after(retry_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::ReplicateError;

    #[test]
    fn each_cross_node_failure_gets_its_own_message_and_only_retryable_ones_a_retry_hint() {
        let cases = [
            (PublishError::NoMembers, ErrorCode::Unavailable, Some(100), "room is not ready"),
            (
                PublishError::OwnerMoved { owner: "node-2".into() },
                ErrorCode::Unavailable,
                Some(50),
                "room owner moved to node-2",
            ),
            (
                PublishError::OwnerUnreachable { owner: "node-3".into() },
                ErrorCode::Unavailable,
                Some(200),
                "room owner node-3 is unreachable",
            ),
            (
                PublishError::TimedOut,
                ErrorCode::Unavailable,
                Some(200),
                "no answer from the room owner in time; the message may have been delivered",
            ),
            (
                PublishError::Refused("not authorized".into()),
                ErrorCode::Internal,
                None,
                "the room owner refused the publish: not authorized",
            ),
        ];
        for (error, code, retry, message) in cases {
            assert_eq!(error.retryable(), retry.is_some(), "{error:?}");
            let body = publish_error_body(&error);
            assert_eq!((body.code, body.retry_after_ms, body.message.as_str()), (code, retry, message));
        }
    }

    #[test]
    fn policy_refusals_are_forbidden_or_too_large_and_never_retryable() {
        let forbidden = ServiceError::RoomFull { max_members: 2 };
        assert!(!forbidden.retryable());
        let body = error_body(forbidden, ErrorContext::Join);
        assert_eq!((body.code, body.message.as_str()), (ErrorCode::Forbidden, "room is full (2 members)"));
        let body = error_body(ServiceError::DataTooLarge { max: 10 }, ErrorContext::Publish);
        assert_eq!((body.code, body.message.as_str()), (ErrorCode::TooLarge, "data is over 10 bytes"));
        let body = error_body(ServiceError::NotJoined, ErrorContext::Publish);
        assert_eq!(
            (body.code, body.message.as_str()),
            (ErrorCode::NotJoined, "join the room before publishing")
        );
        let unavailable = ServiceError::Unavailable(ReplicateError::Unavailable("no leader".into()));
        assert!(unavailable.retryable());
        assert_eq!(error_body(unavailable, ErrorContext::Join).retry_after_ms, Some(500));
    }
}
