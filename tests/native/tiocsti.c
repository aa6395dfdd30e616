#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
/* A jailed program that tries to push input into its terminal (stdin): TIOCSTI, the
 * same request with a high bit set (the kernel reads an unsigned int), and TIOCLINUX's
 * paste.  One line each on stdout.  Built static (tests/security/test_terminal.py) so
 * that a bare jail with nothing bound but itself can run it. */
int main(void) {
    const char c = 'x';
    unsigned long reqs[] = {TIOCSTI, TIOCSTI | (1UL << 32)};
    for (int i = 0; i < 2; i++) {
        long r = syscall(SYS_ioctl, 0, reqs[i], &c);
        printf("%#lx: %s\n", reqs[i], r == 0 ? "pushed" : strerror(errno));
    }
    char paste = 3; /* TIOCL_PASTESEL */
    long r = syscall(SYS_ioctl, 0, (unsigned long)TIOCLINUX, &paste);
    printf("TIOCLINUX: %s\n", r == 0 ? "pasted" : strerror(errno));
    return 0;
}
