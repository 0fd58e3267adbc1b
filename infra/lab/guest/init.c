/*
 * PID 1 of the lab's board and VM images.
 *
 * It mounts what a shell needs, prints the boot marker the lab and labfleet wait for
 * ("LABFLEET-BOOT-OK <kernel release> <machine>"), keeps the emulated temperature sensor
 * current, and gives the console a shell: busybox's where the image has one, otherwise
 * a few built-in commands (Debian ships busybox-static only for the build machine's
 * architecture).  Built with -DLABFLEET_BROKEN it prints a marker and exits, so the
 * kernel panics: the image failure tests boot.
 *
 * Temperature: the board reports it in /sys/class/thermal/thermal_zone0/temp
 * (millidegrees, like a real thermal zone).  sysfs is not mounted over /sys, so the lab
 * can feed that file: the initial value comes from `labfleet.temp=` on the kernel
 * command line, later values arrive as lines on the virtio console /dev/hvc0.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define THERMAL_DIR "/sys/class/thermal/thermal_zone0"
#define TEMP_FILE THERMAL_DIR "/temp"

static void write_file(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    if (write(fd, text, strlen(text)) < 0) { /* nothing to do on a full ramfs */ }
    close(fd);
    rename(tmp, path);
}

static void mkdirs(const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

static void initial_temperature(void)
{
    char cmdline[1024] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, cmdline, sizeof cmdline - 1) < 0)
            cmdline[0] = 0;
        close(fd);
    }
    char value[32] = "45000";
    char *p = strstr(cmdline, "labfleet.temp=");
    if (p) {
        p += strlen("labfleet.temp=");
        size_t n = strspn(p, "0123456789");
        if (n > 0 && n < sizeof value) {
            memcpy(value, p, n);
            value[n] = 0;
        }
    }
    strcat(value, "\n");
    mkdirs(THERMAL_DIR);
    write_file(THERMAL_DIR "/type", "labfleet-board\n");
    write_file(TEMP_FILE, value);
}

/* Child process: copy every line that arrives on the sensor channel into TEMP_FILE. */
static void sensor_loop(void)
{
    for (;;) {
        int fd = open("/dev/hvc0", O_RDONLY);
        if (fd < 0) {
            sleep(1);
            continue;
        }
        char line[64];
        size_t used = 0;
        char c;
        while (read(fd, &c, 1) == 1) {
            if (c == '\n' || c == '\r') {
                line[used] = 0;
                if (used > 0 && strspn(line, "-0123456789") == used) {
                    strcat(line, "\n");
                    write_file(TEMP_FILE, line);
                }
                used = 0;
            } else if (used < sizeof line - 2) {
                line[used++] = c;
            }
        }
        close(fd);
        sleep(1);
    }
}

static void print_df(void)
{
    const char *mounts[] = {"/", "/data"};
    printf("Filesystem     1024-blocks    Used Available Capacity Mounted on\n");
    for (int i = 0; i < 2; i++) {
        struct statfs s;
        if (statfs(mounts[i], &s) != 0)
            continue;
        unsigned long long bs = s.f_bsize / 1024 ? s.f_bsize / 1024 : 1;
        unsigned long long total = s.f_blocks * bs, avail = s.f_bavail * bs;
        unsigned long long used = (s.f_blocks - s.f_bfree) * bs;
        unsigned pct = total ? (unsigned)((used * 100 + total - 1) / total) : 0;
        printf("%-14s %11llu %7llu %9llu %7u%% %s\n", i ? "tmpfs" : "rootfs", total, used,
               avail, pct, mounts[i]);
    }
}

static void cat(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("cat: %s: %s\n", path, strerror(errno));
        return;
    }
    char buf[512];
    ssize_t n;
    fflush(stdout);
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write(1, buf, n) < 0)
            break;
    close(fd);
}

/* The built-in console shell for images without busybox. */
static void mini_shell(void)
{
    struct utsname u;
    uname(&u);
    char line[512];
    for (;;) {
        printf("/ # ");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) {
            sleep(1);
            clearerr(stdin);
            continue;
        }
        line[strcspn(line, "\r\n")] = 0;
        char *argv[16];
        int argc = 0;
        for (char *t = strtok(line, " \t"); t && argc < 15; t = strtok(NULL, " \t"))
            argv[argc++] = t;
        argv[argc] = NULL;
        if (argc == 0)
            continue;
        if (!strcmp(argv[0], "echo")) {
            for (int i = 1; i < argc; i++)
                printf("%s%s", argv[i], i + 1 < argc ? " " : "");
            printf("\n");
        } else if (!strcmp(argv[0], "uname")) {
            if (argc > 1 && !strcmp(argv[1], "-r"))
                printf("%s\n", u.release);
            else if (argc > 1 && !strcmp(argv[1], "-m"))
                printf("%s\n", u.machine);
            else if (argc > 1 && !strcmp(argv[1], "-a"))
                printf("%s %s %s %s %s\n", u.sysname, u.nodename, u.release, u.version, u.machine);
            else
                printf("%s\n", u.sysname);
        } else if (!strcmp(argv[0], "cat")) {
            for (int i = 1; i < argc; i++)
                cat(argv[i]);
        } else if (!strcmp(argv[0], "df")) {
            print_df();
        } else if (!strcmp(argv[0], "ls")) {
            DIR *d = opendir(argc > 1 ? argv[1] : ".");
            struct dirent *e;
            while (d && (e = readdir(d)))
                if (e->d_name[0] != '.')
                    printf("%s\n", e->d_name);
            if (d)
                closedir(d);
        } else if (!strcmp(argv[0], "poweroff") || !strcmp(argv[0], "reboot")) {
            sync();
            reboot(!strcmp(argv[0], "poweroff") ? RB_POWER_OFF : RB_AUTOBOOT);
        } else if (!strcmp(argv[0], "true") || !strcmp(argv[0], "help")) {
            if (argv[0][0] == 'h')
                printf("built-in commands: echo uname cat df ls poweroff reboot true help\n");
        } else {
            printf("sh: %s: not found\n", argv[0]);
        }
    }
}

/* busybox's halt/poweroff/reboot signal PID 1 the way they signal its own init. */
static void power_signal(int sig)
{
    sync();
    reboot(sig == SIGTERM ? RB_AUTOBOOT : sig == SIGUSR1 ? RB_HALT_SYSTEM : RB_POWER_OFF);
}

int main(void)
{
    signal(SIGUSR1, power_signal);
    signal(SIGUSR2, power_signal);
    signal(SIGTERM, power_signal);
    mkdir("/proc", 0755);
    mkdir("/dev", 0755);
    mkdir("/data", 0755);
    mkdir("/tmp", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/data", "tmpfs", 0, "size=64m");
    mount("tmpfs", "/tmp", "tmpfs", 0, "size=16m");
    int con = open("/dev/console", O_RDWR);
    if (con >= 0) {
        dup2(con, 0);
        dup2(con, 1);
        dup2(con, 2);
        if (con > 2)
            close(con);
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    struct utsname u;
    uname(&u);
#ifdef LABFLEET_BROKEN
    printf("\nLABFLEET-BOOT-BROKEN %s %s: init exits on purpose\n", u.release, u.machine);
    return 1;
#else
    initial_temperature();
    printf("\nLABFLEET-BOOT-OK %s %s\n", u.release, u.machine);
    if (fork() == 0) {
        sensor_loop();
        _exit(0);
    }
    for (;;) {
        pid_t shell = fork();
        if (shell == 0) {
            setsid();
            if (access("/bin/sh", X_OK) == 0) {
                execl("/bin/sh", "sh", NULL);
            }
            mini_shell();
            _exit(0);
        }
        /* Reap everything; respawn the console shell when it exits. */
        for (;;) {
            pid_t done = wait(NULL);
            if (done == shell || (done < 0 && errno == ECHILD))
                break;
        }
    }
#endif
}
