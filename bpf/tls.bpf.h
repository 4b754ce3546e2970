/* SPDX-License-Identifier: MIT */
/*
 * TLS connections of processes whose sockets are followed: asyncpg over Python's ssl, which
 * encrypts in memory (ssl.MemoryBIO), so no socket is ever handed to libssl; libpq, whose BIO
 * writes to the socket itself. The plaintext is read where libssl takes it (SSL_write_ex,
 * SSL_write, at entry) and gives it (SSL_read_ex, SSL_read, at their return), and walked like a
 * socket's bytes, as the stream fd | SQLSPAN_TLS_FD. Which socket an
 * SSL object serves is learnt at the handshake: the thread that calls SSL_do_handshake next
 * sends the ClientHello on the socket (front_startup calls tls_bind); for a connection whose
 * handshake was before sqlspan attached, at the first TLS record the thread sends after libssl
 * took whole frontend messages (front_socket calls tls_bind). bpf_loop kernels only.
 */
#ifndef SQLSPAN_TLS_BPF_H
#define SQLSPAN_TLS_BPF_H

struct ssl_key {
	__u32 tgid;
	__u32 _pad;
	__u64 ssl; /* SSL * */
};

/* SSL object -> the socket it encrypts for */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ssl_key);
	__type(value, __s32);
} ssl_fds SEC(".maps");

/* socket -> its SSL object (to forget the binding when the socket closes) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct fd_key);
	__type(value, __u64);
} fd_ssls SEC(".maps");

/*
 * per thread: the SSL object of its last SSL_do_handshake, or (| 1) of its last SSL_write(_ex)
 * whose plaintext was whole frontend messages on an SSL object not bound yet (a connection
 * whose handshake was before sqlspan attached), with that plaintext's place (buf, len)
 */
struct ssl_last {
	__u64 ssl;
	__u64 buf;
	__u64 len;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ssl_last);
} ssl_last SEC(".maps");

/* per thread: an SSL_read_ex in progress on a bound SSL object */
struct ssl_read {
	__u64 buf;
	__u64 nread; /* size_t *readbytes */
	__s32 fd;    /* fd | SQLSPAN_TLS_FD */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ssl_read);
} ssl_reads SEC(".maps");

/* The socket a bound SSL object serves, as its plaintext stream (fd | SQLSPAN_TLS_FD); -1 if none
 */
static __always_inline __s32 tls_stream(__u32 tgid, __u64 ssl)
{
	struct ssl_key k = {.tgid = tgid, .ssl = ssl};
	__s32 *fd = bpf_map_lookup_elem(&ssl_fds, &k);

	return fd ? *fd | SQLSPAN_TLS_FD : -1;
}

/*
 * The thread's SSL object (ssl_last) is the one of w's socket: at the ClientHello that follows
 * its handshake (`established` 0: the plaintext starts with the StartupMessage), or at the first
 * TLS record sent after a write of whole protocol messages (`established` 1: a connection from
 * before sqlspan attached; its plaintext is followed from the next message on). 1 if bound.
 */
static __noinline int tls_bind(struct fwalk *w, int established)
{
	__u32 tid = (__u32)w->pid_tgid, zero = 0;
	struct ssl_last *last = bpf_map_lookup_elem(&ssl_last, &tid);
	struct ssl_key k = {.tgid = w->key.tgid};
	struct fd_key pk = {.tgid = w->key.tgid, .fd = w->fd | SQLSPAN_TLS_FD};
	struct fd_state *st;
	void *z;

	if (!last || !last->ssl || (last->ssl & 1) != (__u64)established)
		return 0;
	k.ssl = last->ssl & ~1ULL;
	/* the plaintext of the write this record carries: walked next if it is still there */
	w->replay_buf = established ? last->buf : 0;
	w->replay_len = established ? last->len : 0;
	bpf_map_delete_elem(&ssl_last, &tid);
	z = bpf_map_lookup_elem(&zeroes, &zero);
	if (!z || bpf_map_update_elem(&ssl_fds, &k, &w->fd, BPF_ANY) ||
	    bpf_map_update_elem(&fd_ssls, &w->key, &k.ssl, BPF_ANY) ||
	    bpf_map_update_elem(&fds, &pk, z, BPF_ANY) ||
	    (established && bpf_map_update_elem(&fds, &w->key, z, BPF_ANY))) {
		stat_add(ST_FD_FULL, 1);
		return 0;
	}
	st = bpf_map_lookup_elem(&fds, &pk);
	if (st) {
		st->flags = established ? FS_WIRE | FS_SYNCED : FS_WIRE;
		st->epoch = sync_epoch;
		st->front.flags = established ? 0 : FR_STARTUP;
	}
	if (established) { /* the socket itself: known as encrypted, its bytes not walked */
		st = bpf_map_lookup_elem(&fds, &w->key);
		if (st)
			st->flags = FS_WIRE | FS_TLS;
	}
	return 1;
}

static __noinline int front_probe(struct fwalk *w);

/*
 * The send that tied an SSL object to its socket (tls_bind, established) carries the TLS record
 * of the plaintext its thread's libssl just took: libpq writes it to the socket inside that
 * SSL_write, so the plaintext is there to walk now, as the TLS stream's send (Python's ssl writes
 * it later: only if the bytes are still whole frontend messages, as they were then). 1 if w is
 * set up for that walk.
 */
static __noinline int tls_replay(struct fwalk *w)
{
	w->key.fd = w->fd | SQLSPAN_TLS_FD;
	w->fd = w->key.fd;
	w->buf = w->replay_buf;
	w->n = w->replay_len < (1u << 30) ? (__u32)w->replay_len : 0;
	w->left = w->n;
	w->vec[0] = w->buf;
	w->vec[1] = w->n;
	w->iov = 0;
	w->pos = 0;
	w->replay_len = 0;
	return w->n && front_probe(w) == 2;
}

/* A socket closes: its TLS stream and binding go with it. */
static __always_inline void tls_close(struct fd_key *k)
{
	struct fd_key pk = {.tgid = k->tgid, .fd = k->fd | SQLSPAN_TLS_FD};
	__u64 *ssl = bpf_map_lookup_elem(&fd_ssls, k);
	struct ssl_key sk = {.tgid = k->tgid};

	if (!ssl)
		return;
	sk.ssl = *ssl;
	bpf_map_delete_elem(&ssl_fds, &sk);
	bpf_map_delete_elem(&fd_ssls, k);
	bpf_map_delete_elem(&fds, &pk);
}

#endif
