/* SPDX-License-Identifier: MIT */
/*
 * Where libpq keeps what sqlspan needs in a PGconn, read out of libpq's own accessor functions
 * (PQsocket returns conn->sock, PQdb conn->dbName, ...), so that any build of any libpq version
 * works without a table of versions. Offsets that cannot be derived stay -1 ("unknown").
 */
#ifndef SQLSPAN_PQLAYOUT_H
#define SQLSPAN_PQLAYOUT_H

#include <stddef.h>
#include <stdint.h>

struct pq_layout {
	int sock;	/* int: the socket */
	int pipeline;	/* PGpipelineStatus (libpq 14+) */
	int status;	/* ConnStatusType */
	int be_pid;	/* int: backend PID */
	int db_name;	/* char * */
	int user;	/* char * */
	int connhost;	/* pg_conn_host * (array) */
	int whichhost;	/* int: index into connhost */
	int host_size;	/* sizeof(pg_conn_host) */
	int host_host;	/* offsetof(pg_conn_host, host) */
	int host_addr;	/* offsetof(pg_conn_host, hostaddr) */
	int host_port;	/* offsetof(pg_conn_host, port) */
	int host_type;	/* offsetof(pg_conn_host, type) */
	int ssl_in_use; /* bool */
};

void pq_layout_init(struct pq_layout *l);

/* The accessor functions read, by name; each takes the function's code. */
int pq_layout_from_socket(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_pipeline_status(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_backend_pid(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_db(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_user(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_port(struct pq_layout *l, const uint8_t *code, size_t n);
int pq_layout_from_ssl_in_use(struct pq_layout *l, const uint8_t *code, size_t n);

#endif
