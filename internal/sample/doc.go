// Package sample is a small three-tier business application (web, app, db)
// that Corridor runs in its lab, its demo and `corridor verify`, so that a
// request to the web tier visibly goes through both policy paths
// (web→app and app→db) and reports which task of each tier served it.
//
// The tiers are:
//
//   - db ([DBServer]): a durable key-value service speaking a line protocol
//     over TCP (see [ParseCommand]), kept in an append-only log with one
//     fsync per write (see [Store]).
//   - app ([App]): an HTTP/JSON order API that stores orders in db; it finds
//     db from CORRIDOR_PEERS_DB.
//   - web ([Web]): an HTML page and a JSON summary that call app, found from
//     CORRIDOR_PEERS_APP, round-robin with failover.
//
// Each tier names itself from CORRIDOR_TASK and CORRIDOR_ADDR (see
// [IdentityFromEnv]), which is how a reply tells which task served it.
package sample
