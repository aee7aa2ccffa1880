/* A minimal HTTP/1.1 reader, to tell a scrape's client cost from the server's: N GETs of PATH on
 * 127.0.0.1:PORT, each on a new connection, each response read to its last byte (chunked or
 * Content-Length) into one buffer of BUFSIZE bytes and discarded. Prints per request: wall time
 * (ms, from the request's send), status, bytes read, voluntary and involuntary context switches
 * and user / system CPU time (ms) of this reader.
 *
 *   cc -O2 -Wall -o /tmp/gm-reader scripts/scrape-floor/reader.c
 *   /tmp/gm-reader PORT PATH N [BUFSIZE (default 1 MiB)] [SO_RCVBUF (default: autotuned)] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double ms(struct timeval a, struct timeval b) {
    return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_usec - a.tv_usec) / 1e3;
}

enum state { HEAD, SIZE_LINE, CHUNK, CHUNK_END, TRAILER, BODY };

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT PATH N [BUFSIZE] [SO_RCVBUF]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[3]);
    size_t bs = argc > 4 ? strtoul(argv[4], 0, 0) : (1 << 20);
    int rcvbuf = argc > 5 ? atoi(argv[5]) : 0;
    char *buf = malloc(bs), req[1024], head[16384], line[64];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", argv[2]);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (rcvbuf)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (void *)&a, sizeof a)) {
            perror("connect");
            return 1;
        }
        struct rusage ru0, ru1;
        getrusage(RUSAGE_SELF, &ru0);
        double t0 = now();
        if (write(fd, req, rl) != rl) {
            perror("write");
            return 1;
        }
        enum state st = HEAD;
        size_t hl = 0;
        int ll = 0, done = 0, status = 0;
        long left = 0, total = 0;
        while (!done) {
            ssize_t got = read(fd, buf, bs);
            if (got <= 0) {
                fprintf(stderr, "connection closed mid-response\n");
                return 1;
            }
            total += got;
            for (char *p = buf, *e = buf + got; p < e && !done;) {
                switch (st) {
                case HEAD:
                    if (hl == sizeof head - 1) {
                        fprintf(stderr, "header too long\n");
                        return 1;
                    }
                    head[hl++] = *p++;
                    if (hl >= 4 && !memcmp(head + hl - 4, "\r\n\r\n", 4)) {
                        head[hl] = 0;
                        status = atoi(head + 9);
                        char *cl = strcasestr(head, "\r\ncontent-length:");
                        if (strcasestr(head, "\r\ntransfer-encoding: chunked")) {
                            st = SIZE_LINE;
                        } else if (cl) {
                            left = atol(cl + 17);
                            st = BODY;
                            done = left == 0;
                        } else {
                            fprintf(stderr, "neither chunked nor a length\n");
                            return 1;
                        }
                    }
                    break;
                case SIZE_LINE:
                    if (*p == '\n') {
                        line[ll] = 0;
                        left = strtol(line, 0, 16);
                        ll = 0;
                        st = left ? CHUNK : TRAILER;
                    } else if (ll < (int)sizeof line - 1) {
                        line[ll++] = *p;
                    }
                    p++;
                    break;
                case CHUNK:
                case BODY: {
                    long k = e - p < left ? e - p : left;
                    p += k;
                    left -= k;
                    if (!left && st == BODY) {
                        done = 1;
                    } else if (!left) {
                        st = CHUNK_END;
                        left = 2;
                    }
                    break;
                }
                case CHUNK_END:
                    p++;
                    if (!--left)
                        st = SIZE_LINE;
                    break;
                case TRAILER: /* no trailers expected: the empty line ends the response */
                    if (*p == '\n') {
                        if (ll == 0)
                            done = 1;
                        ll = 0;
                    } else if (*p != '\r') {
                        ll++;
                    }
                    p++;
                    break;
                }
            }
        }
        double t = now() - t0;
        getrusage(RUSAGE_SELF, &ru1);
        printf("%.3f %d %ld %ld %ld %.2f %.2f\n", t * 1e3, status, total,
               ru1.ru_nvcsw - ru0.ru_nvcsw, ru1.ru_nivcsw - ru0.ru_nivcsw,
               ms(ru0.ru_utime, ru1.ru_utime), ms(ru0.ru_stime, ru1.ru_stime));
        close(fd);
    }
    return 0;
}
