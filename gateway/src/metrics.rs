//! Metric names of the gateway (`switchyard_gateway_*`).

/// Sessions connected now (gauge).
pub const SESSIONS: &str = "switchyard_gateway_sessions";
/// Connections accepted, by transport and outcome (counter).
pub const CONNECTIONS: &str = "switchyard_gateway_connections_total";
/// Requests answered, by status (counter).
pub const REQUESTS: &str = "switchyard_gateway_requests_total";
/// Time from a request's arrival to its response being queued (histogram, seconds).
pub const REQUEST_DURATION: &str = "switchyard_gateway_request_duration_seconds";
/// Pushes queued to clients (counter).
pub const PUSHES: &str = "switchyard_gateway_pushes_total";
/// Sessions closed by the gateway, by reason (counter).
pub const KICKS: &str = "switchyard_gateway_kicks_total";
/// Frames refused before routing, by reason (counter).
pub const BAD_FRAMES: &str = "switchyard_gateway_bad_frames_total";
/// Bindings held by this gateway's sessions, summed (gauge). With no sessions it must be 0.
pub const BINDINGS: &str = "switchyard_gateway_bindings";
/// Session objects alive in memory (gauge). Equal to `switchyard_gateway_sessions` once every
/// closed connection has finished its cleanup; a lasting difference is a leak.
pub const SESSION_OBJECTS: &str = "switchyard_gateway_session_objects";
/// Frames the gateway refused to send because they exceed the client frame limit, by reason
/// (counter). Any count is a logic server asking for the impossible; nobody is disconnected.
pub const FRAMES_REFUSED: &str = "switchyard_gateway_frames_refused_total";
/// Sessions whose connection dropped without a goodbye and that were held for a resume
/// (counter).
pub const SESSIONS_HELD: &str = "switchyard_gateway_sessions_held_total";
/// Sessions held now without a connection, waiting for a resume (gauge).
pub const SESSIONS_DETACHED: &str = "switchyard_gateway_sessions_detached";
/// Resume attempts, by outcome: `resumed` (every push replayed), `gap` (some were no longer
/// held; the client was told), or the refusal's code name (counter).
pub const RESUMES: &str = "switchyard_gateway_resumes_total";
/// Sessions ended, by why: `goodbye`, `kicked`, `window_passed`, `replaced_login`,
/// `shutdown` (counter).
pub const SESSIONS_ENDED: &str = "switchyard_gateway_sessions_ended_total";
/// Wills of gone nodes pushed to their sessions (counter).
pub const WILLS_DELIVERED: &str = "switchyard_gateway_wills_delivered_total";
/// Sessions handed over to another gateway, by outcome: `moved`, `failed` (counter).
pub const MOVES: &str = "switchyard_gateway_moves_total";
/// Drain outcomes per session: `migrated`, `kicked` (no other gateway), `ended` (counter).
pub const DRAIN_OUTCOMES: &str = "switchyard_gateway_drain_outcomes_total";
/// Pushes forwarded to the gateway a user moved to, by outcome: `sent`, `lost` (that gateway
/// did not take them), `dropped` (the queue toward it was full), `unclaimed` (taken here for
/// a user not here) (counter).
pub const FORWARDS: &str = "switchyard_gateway_forwards_total";
/// New clients placed elsewhere, by outcome: `redirected` (with `reason` `full` or `load`),
/// `full` (refused with GATEWAY_FULL: no gateway had room), or `move_suggested` (a session
/// was asked to move to the gateway holding most of its room) (counter).
pub const PLACEMENTS: &str = "switchyard_gateway_placements_total";
/// Times this gateway was fenced (cut off from the majority) and disconnected every client.
pub const FENCES: &str = "switchyard_gateway_fences_total";
/// Logins that waited for a gateway that did not answer to be certainly fenced.
pub const LOGIN_WAITS: &str = "switchyard_gateway_login_waits_total";
