/* The transport floor without nginx: serves FILE, read into memory once, to every connection
 * on 127.0.0.1:PORT as an HTTP/1.1 response with a Content-Length (whatever the request), in
 * blocking writes of WRITE bytes, then closes. Read it with reader.c.
 *
 *   cc -O2 -Wall -o /tmp/gm-sender scripts/scrape-floor/sender.c
 *   /tmp/gm-sender PORT FILE [WRITE (default 64 KiB)] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT FILE [WRITE]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st)) {
        perror(argv[2]);
        return 1;
    }
    size_t n = st.st_size, w = argc > 3 ? strtoul(argv[3], 0, 0) : 65536;
    char *data = malloc(n ? n : 1);
    if (fread(data, 1, n, f) != n) {
        perror("read");
        return 1;
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 16)) {
        perror("bind");
        return 1;
    }
    for (;;) {
        int c = accept(ls, 0, 0);
        char req[4096], h[128];
        if (c < 0 || read(c, req, sizeof req) <= 0) {
            close(c);
            continue;
        }
        int hl = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
        if (write(c, h, hl) == hl)
            for (size_t off = 0; off < n;) {
                ssize_t k = write(c, data + off, n - off < w ? n - off : w);
                if (k <= 0)
                    break;
                off += k;
            }
        close(c);
    }
}
