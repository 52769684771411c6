//! Where a new client is served: here, or at another gateway with more room (a redirect).
//!
//! Decided on a connection's first request, before any login, from each gateway's sessions
//! and capacity (`--max-sessions`; published in its member record, so others' figures are as
//! fresh as gossip). A client that was redirected says so (`Envelope.redirected`) and is
//! served or refused, never sent on: one hop at most, never a loop. The decision itself is
//! [`place`], a pure function (table-tested).

use mesh::NodeId;
use tracing::info;
use wire::{Envelope, ErrorCode, envelope};

use crate::{
    conn::{Conn, Ending},
    gateway::Gateway,
};

/// A gateway's load as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Gauge {
    pub(crate) sessions: u64,
    /// 0: unlimited.
    pub(crate) capacity: u64,
}

impl Gauge {
    fn full(self) -> bool {
        self.capacity > 0 && self.sessions >= self.capacity
    }

    /// Sessions per unit of capacity (0 for an unlimited gateway).
    fn ratio(self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.sessions as f64 / self.capacity as f64
        }
    }
}

/// Where a new client goes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Placement {
    Serve,
    /// To this gateway: this one is full (`full`), or its load ratio exceeds the other's by
    /// more than the margin.
    Redirect {
        to: NodeId,
        full: bool,
    },
    /// Full, and nobody else has room (or the client was redirected here already).
    Full,
}

/// Decides where a new client goes, given this gateway's gauge, the other online gateways'
/// and the redirect margin (`--redirect-margin`; 0 turns load redirects off, a full gateway
/// still redirects). The other gateway chosen is the one with the lowest load ratio that is
/// not full (node id breaks ties).
pub(crate) fn place(
    me: Gauge,
    others: &[(NodeId, Gauge)],
    margin: f64,
    redirected: bool,
) -> Placement {
    if redirected {
        return if me.full() {
            Placement::Full
        } else {
            Placement::Serve
        };
    }
    let best = others
        .iter()
        .filter(|(_, gauge)| !gauge.full())
        .min_by(|(a_id, a), (b_id, b)| a.ratio().total_cmp(&b.ratio()).then(a_id.cmp(b_id)));
    match best {
        Some((to, _)) if me.full() => Placement::Redirect {
            to: to.clone(),
            full: true,
        },
        None if me.full() => Placement::Full,
        Some((to, gauge))
            if margin > 0.0 && me.capacity > 0 && me.ratio() - gauge.ratio() > margin =>
        {
            Placement::Redirect {
                to: to.clone(),
                full: false,
            }
        }
        _ => Placement::Serve,
    }
}

impl Gateway {
    /// Places the client of a connection's first request (`request`): `true` when it is served
    /// here; otherwise the connection was answered (`REDIRECT`, or `GATEWAY_FULL`) and closes.
    pub(crate) fn place_first_request(&self, conn: &Conn, request: &Envelope) -> bool {
        // This connection already counts among the sessions.
        let me = Gauge {
            sessions: (self.sessions.len() as u64).saturating_sub(1),
            capacity: self.majority.capacity(),
        };
        let members = self.mesh.cluster().members();
        let others: Vec<(NodeId, Gauge)> = self
            .other_gateways()
            .into_iter()
            .filter_map(|id| {
                let node = members.get(&id).filter(|n| n.is_online())?;
                let gauge = Gauge {
                    sessions: node.load.sessions,
                    capacity: node.load.capacity,
                };
                Some((id, gauge))
            })
            .collect();
        let placement = place(me, &others, self.limits.redirect_margin, request.redirected);
        let (to, full) = match placement {
            Placement::Serve => return true,
            Placement::Full => {
                ::metrics::counter!(crate::metrics::PLACEMENTS, "outcome" => "full").increment(1);
                let reason = "this gateway is full; try again later";
                let refusal = envelope::error(
                    request.msg_id,
                    request.route,
                    ErrorCode::GatewayFull,
                    reason,
                );
                conn.end_with(
                    Ending::Kicked(ErrorCode::GatewayFull as u32),
                    reason,
                    &refusal,
                );
                return false;
            }
            Placement::Redirect { to, full } => (to, full),
        };
        let addresses = members
            .get(&to)
            .and_then(|n| n.client_addr.clone())
            .map(|a| a.split(',').map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        let reason = if full { "full" } else { "load" };
        info!(%to, reason, "client redirected");
        ::metrics::counter!(crate::metrics::PLACEMENTS, "outcome" => "redirected", "reason" => reason)
            .increment(1);
        let redirect = envelope::redirect(request.msg_id, request.route, addresses);
        conn.end_with(Ending::Goodbye, "redirected to another gateway", &redirect);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(sessions: u64, capacity: u64) -> Gauge {
        Gauge { sessions, capacity }
    }

    fn others(list: &[(&str, u64, u64)]) -> Vec<(NodeId, Gauge)> {
        list.iter()
            .map(|(id, s, c)| (NodeId::new(*id), gauge(*s, *c)))
            .collect()
    }

    fn redirect(to: &str, full: bool) -> Placement {
        Placement::Redirect {
            to: NodeId::new(to),
            full,
        }
    }

    #[test]
    fn a_new_client_goes_where_there_is_room_and_is_redirected_at_most_once() {
        use Placement::*;
        let margin = 0.25;
        // (me, others, redirected) → placement
        type Row = (Gauge, Vec<(NodeId, Gauge)>, bool, Placement);
        let table: Vec<Row> = vec![
            // Room here, nobody much emptier: served.
            (gauge(5, 10), others(&[("b", 4, 10)]), false, Serve),
            // Unlimited here: never redirected by load.
            (gauge(900, 0), others(&[("b", 0, 10)]), false, Serve),
            // Full: to the emptiest other gateway that is not full.
            (
                gauge(10, 10),
                others(&[("b", 9, 10), ("c", 2, 10)]),
                false,
                redirect("c", true),
            ),
            (
                gauge(10, 10),
                others(&[("b", 10, 10), ("c", 5, 0)]),
                false,
                redirect("c", true),
            ),
            // Full, every other full too (or none): refused, not sent round.
            (gauge(10, 10), others(&[("b", 10, 10)]), false, Full),
            (gauge(10, 10), vec![], false, Full),
            // Much busier than another (0.9 against 0.1): redirected there.
            (
                gauge(9, 10),
                others(&[("b", 1, 10)]),
                false,
                redirect("b", false),
            ),
            // Within the margin: served.
            (gauge(6, 10), others(&[("b", 4, 10)]), false, Serve),
            // Ties between others go to the lower node id.
            (
                gauge(10, 10),
                others(&[("c", 1, 10), ("b", 1, 10)]),
                false,
                redirect("b", true),
            ),
            // Redirected here already: served if there is room, else refused; never sent on.
            (gauge(9, 10), others(&[("b", 0, 10)]), true, Serve),
            (gauge(10, 10), others(&[("b", 0, 10)]), true, Full),
        ];
        for (me, others, redirected, expected) in table {
            assert_eq!(
                place(me, &others, margin, redirected),
                expected,
                "{me:?} {others:?} redirected={redirected}"
            );
        }
        // Margin 0: no load redirects; a full gateway still redirects.
        assert_eq!(
            place(gauge(9, 10), &others(&[("b", 0, 10)]), 0.0, false),
            Serve
        );
        assert_eq!(
            place(gauge(10, 10), &others(&[("b", 0, 10)]), 0.0, false),
            redirect("b", true)
        );
    }
}
