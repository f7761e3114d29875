/*
 * A stand-in for NVIDIA's NVML (libnvidia-ml.so.1), so that code using the official binding (pynvml)
 * can be tested on hosts without a GPU. Same ABI as nvml.h for the calls below; the "driver" is a
 * directory named by $BABYSIT_FAKE_NVML, re-read on every call so a test can change figures while
 * the program under test runs:
 *
 *   devices       one line per GPU: <uuid> <total_bytes> <other_used_bytes> <utilization_pct> <name...>
 *                 (index and minor number = line order; blank lines and '#' comments are skipped)
 *   procs/<pid>   what a process says it allocated: lines of <uuid> <bytes>. A process that has exited
 *                 counts for nothing, as the driver frees a process's memory when it exits.
 *
 * No $BABYSIT_FAKE_NVML or no devices file: a host without the driver (NVML_ERROR_DRIVER_NOT_LOADED).
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -o libnvidia-ml.so.1 nvml.c
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* Values as in nvml.h: callers compare against them. */
typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
} nvmlReturn_t;

#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFu /* gpu/compute instance ids outside MIG */

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* nvml.h's NVML_STRUCT_VERSION: the struct's size, and its version in the top byte */
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

/* nvmlProcessInfo_v2_t; _v3 calls take the same layout */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define DRIVER_VERSION "550.54.15-fake"
#define MAX_DEVICES 64
#define MAX_PROCESSES 256
#define MAX_HANDLES 256 /* one per UUID ever seen; a test that churns more has bigger problems */
#define LINE_SIZE 512

struct device {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned long long total;
    unsigned long long other_used;
    unsigned int utilization;
};

struct table {
    unsigned int count;
    struct device devices[MAX_DEVICES];
};

struct usage {
    unsigned long long bytes;
    unsigned int count;
    nvmlProcessInfo_t processes[MAX_PROCESSES];
};

/* ---- the devices file ---- */

static bool data_path(char *path, size_t size, const char *name)
{
    const char *root = getenv("BABYSIT_FAKE_NVML");
    if (root == NULL || *root == '\0')
        return false;
    int written = snprintf(path, size, "%s/%s", root, name);
    return written > 0 && (size_t)written < size;
}

static bool is_blank_or_comment(const char *line)
{
    while (isspace((unsigned char)*line))
        line++;
    return *line == '\0' || *line == '#';
}

static void strip_trailing_space(char *text)
{
    size_t length = strlen(text);
    while (length > 0 && isspace((unsigned char)text[length - 1]))
        text[--length] = '\0';
}

static const struct device *find_device(const struct table *table, const char *uuid)
{
    for (unsigned int i = 0; i < table->count; i++)
        if (strcmp(table->devices[i].uuid, uuid) == 0)
            return &table->devices[i];
    return NULL;
}

/* A malformed line fails the whole read, so a mistake in a test's fixture is loud, not a missing GPU. */
static nvmlReturn_t parse_device(char *line, struct table *table)
{
    struct device device;
    int name_at = -1;
    if (sscanf(line, " %95s %llu %llu %u %n", device.uuid, &device.total, &device.other_used,
               &device.utilization, &name_at) != 4 || name_at < 0)
        return NVML_ERROR_UNKNOWN;
    char *name = line + name_at;
    strip_trailing_space(name);
    if (*name == '\0' || strlen(name) >= sizeof device.name || device.utilization > 100)
        return NVML_ERROR_UNKNOWN;
    if (table->count == MAX_DEVICES || find_device(table, device.uuid) != NULL)
        return NVML_ERROR_UNKNOWN;
    strcpy(device.name, name);
    table->devices[table->count++] = device;
    return NVML_SUCCESS;
}

static nvmlReturn_t read_devices(struct table *table)
{
    char path[PATH_MAX];
    FILE *file = data_path(path, sizeof path, "devices") ? fopen(path, "r") : NULL;
    if (file == NULL)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    char line[LINE_SIZE];
    nvmlReturn_t status = NVML_SUCCESS;
    table->count = 0;
    while (status == NVML_SUCCESS && fgets(line, sizeof line, file) != NULL) {
        if (strchr(line, '\n') == NULL && !feof(file))
            status = NVML_ERROR_UNKNOWN; /* longer than any real line: a fixture gone wrong */
        else if (!is_blank_or_comment(line))
            status = parse_device(line, table);
    }
    if (status == NVML_SUCCESS && ferror(file))
        status = NVML_ERROR_UNKNOWN;
    fclose(file);
    return status;
}

/* ---- the procs directory ---- */

static pid_t parse_pid(const char *name)
{
    if (!isdigit((unsigned char)*name))
        return 0; /* also skips a writer's temporary files */
    char *end;
    errno = 0;
    long pid = strtol(name, &end, 10);
    return (errno == 0 && *end == '\0' && pid > 0 && pid <= INT_MAX) ? (pid_t)pid : 0;
}

/* The driver frees a process's memory when it exits, before its parent reaps it. */
static bool is_zombie(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return false; /* no /proc to ask: trust kill() alone */
    char stat[LINE_SIZE];
    size_t length = fread(stat, 1, sizeof stat - 1, file);
    fclose(file);
    stat[length] = '\0';
    const char *after_name = strrchr(stat, ')'); /* the name in parentheses may hold anything */
    return after_name != NULL && after_name[1] == ' ' && (after_name[2] == 'Z' || after_name[2] == 'X');
}

static bool is_alive(pid_t pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return false;
    return !is_zombie(pid);
}

/* What one process's file says it holds on the device; false if it names nothing there. */
static bool bytes_on(const char *procs, pid_t pid, const char *uuid, unsigned long long *bytes)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%ld", procs, (long)pid) >= (int)sizeof path)
        return false;
    FILE *file = fopen(path, "r");
    if (file == NULL)
        return false; /* gone since readdir: the process cleaned up after itself */
    char line[LINE_SIZE], on[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    unsigned long long amount;
    bool found = false;
    *bytes = 0;
    while (fgets(line, sizeof line, file) != NULL) {
        if (sscanf(line, " %95s %llu", on, &amount) == 2 && strcmp(on, uuid) == 0) {
            *bytes += amount;
            found = true;
        }
    }
    fclose(file);
    return found;
}

static void scan_processes(const char *uuid, struct usage *usage)
{
    usage->bytes = 0;
    usage->count = 0;
    char procs[PATH_MAX];
    DIR *dir = data_path(procs, sizeof procs, "procs") ? opendir(procs) : NULL;
    if (dir == NULL)
        return; /* nobody has allocated anything yet */
    const struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        pid_t pid = parse_pid(entry->d_name);
        unsigned long long bytes;
        if (pid == 0 || !bytes_on(procs, pid, uuid, &bytes) || !is_alive(pid))
            continue;
        usage->bytes += bytes;
        if (usage->count < MAX_PROCESSES)
            usage->processes[usage->count++] = (nvmlProcessInfo_t){
                .pid = (unsigned int)pid,
                .usedGpuMemory = bytes,
                .gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT,
                .computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT,
            };
    }
    closedir(dir);
}

/* ---- initialisation and handles ---- */

static atomic_int users; /* nvmlInit calls not yet matched by nvmlShutdown */

/* A handle names a GPU by UUID, not by position, so it follows its GPU if the devices file is reordered. */
struct nvmlDevice_st {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    bool claimed;
};

static struct nvmlDevice_st handles[MAX_HANDLES];
static atomic_flag handles_lock = ATOMIC_FLAG_INIT;

static void lock_handles(void)
{
    while (atomic_flag_test_and_set_explicit(&handles_lock, memory_order_acquire))
        ;
}

static void unlock_handles(void)
{
    atomic_flag_clear_explicit(&handles_lock, memory_order_release);
}

/* The same GPU always gets the same handle, as with the real library. */
static nvmlReturn_t handle_for(const char *uuid, nvmlDevice_t *handle)
{
    nvmlReturn_t status = NVML_ERROR_INSUFFICIENT_RESOURCES;
    lock_handles();
    for (unsigned int i = 0; i < MAX_HANDLES; i++) {
        if (!handles[i].claimed) { /* none is ever freed: past the last claimed slot, the UUID is new */
            strcpy(handles[i].uuid, uuid);
            handles[i].claimed = true;
        }
        if (strcmp(handles[i].uuid, uuid) == 0) {
            *handle = &handles[i];
            status = NVML_SUCCESS;
            break;
        }
    }
    unlock_handles();
    return status;
}

static bool uuid_of(nvmlDevice_t handle, char *uuid)
{
    uintptr_t at = (uintptr_t)handle, first = (uintptr_t)handles;
    if (at < first || (at - first) % sizeof *handle != 0 || (at - first) / sizeof *handle >= MAX_HANDLES)
        return false; /* not one of ours: a stale pointer or garbage */
    lock_handles();
    bool claimed = handle->claimed;
    if (claimed)
        strcpy(uuid, handle->uuid);
    unlock_handles();
    return claimed;
}

/* The device a handle names, as the devices file says now. */
static nvmlReturn_t resolve(nvmlDevice_t handle, struct table *table, const struct device **device)
{
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    if (atomic_load(&users) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid_of(handle, uuid))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t status = read_devices(table);
    if (status != NVML_SUCCESS)
        return status;
    *device = find_device(table, uuid);
    return *device != NULL ? NVML_SUCCESS : NVML_ERROR_GPU_IS_LOST;
}

/* resolve(), for a call that writes its answer to `out` (which must not be NULL) */
static nvmlReturn_t resolve_for(const void *out, nvmlDevice_t handle, struct table *table,
                                const struct device **device)
{
    nvmlReturn_t status = resolve(handle, table, device);
    return status == NVML_SUCCESS && out == NULL ? NVML_ERROR_INVALID_ARGUMENT : status;
}

static nvmlReturn_t copy_out(char *buffer, unsigned int length, const char *text)
{
    if (buffer == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) >= length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buffer, text);
    return NVML_SUCCESS;
}

/* ---- the API ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NVML_INIT_FLAG_NO_GPUS and friends: an empty devices file already means no GPUs */
    struct table table;
    nvmlReturn_t status = read_devices(&table);
    if (status == NVML_SUCCESS)
        atomic_fetch_add(&users, 1);
    return status;
}

nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

nvmlReturn_t nvmlShutdown(void)
{
    int now = atomic_load(&users);
    while (now > 0 && !atomic_compare_exchange_weak(&users, &now, now - 1))
        ;
    return now > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Ran out of critical resources, other than memory";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Struct version passed in does not match the expected one";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (atomic_load(&users) == 0)
        return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, DRIVER_VERSION);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (atomic_load(&users) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct table table;
    nvmlReturn_t status = read_devices(&table);
    if (status == NVML_SUCCESS)
        *count = table.count;
    return status;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return nvmlDeviceGetCount_v2(count);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (atomic_load(&users) == 0)
        return NVML_ERROR_UNINITIALIZED;
    struct table table;
    nvmlReturn_t status = read_devices(&table);
    if (status != NVML_SUCCESS)
        return status;
    if (device == NULL || index >= table.count)
        return NVML_ERROR_INVALID_ARGUMENT;
    return handle_for(table.devices[index].uuid, device);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    if (atomic_load(&users) == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct table table;
    nvmlReturn_t status = read_devices(&table);
    if (status != NVML_SUCCESS)
        return status;
    return find_device(&table, uuid) != NULL ? handle_for(uuid, device) : NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t handle, unsigned int *index)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(index, handle, &table, &device);
    if (status == NVML_SUCCESS)
        *index = (unsigned int)(device - table.devices);
    return status;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t handle, unsigned int *minor)
{
    return nvmlDeviceGetIndex(handle, minor); /* /dev/nvidia<minor>, numbered in the same order */
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t handle, char *uuid, unsigned int length)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve(handle, &table, &device);
    return status == NVML_SUCCESS ? copy_out(uuid, length, device->uuid) : status;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t handle, char *name, unsigned int length)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve(handle, &table, &device);
    return status == NVML_SUCCESS ? copy_out(name, length, device->name) : status;
}

/* Used may exceed total: a test that over-commits should see it, not a tidied figure. */
static void memory_of(const struct device *device, unsigned long long *used, unsigned long long *free)
{
    struct usage usage;
    scan_processes(device->uuid, &usage);
    *used = device->other_used + usage.bytes;
    *free = device->total > *used ? device->total - *used : 0;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t handle, nvmlMemory_t *memory)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(memory, handle, &table, &device);
    if (status == NVML_SUCCESS) {
        memory->total = device->total;
        memory_of(device, &memory->used, &memory->free);
    }
    return status;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t handle, nvmlMemory_v2_t *memory)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(memory, handle, &table, &device);
    if (status == NVML_SUCCESS && memory->version != nvmlMemory_v2)
        status = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (status == NVML_SUCCESS) {
        memory->total = device->total;
        memory->reserved = 0; /* the driver's own share is folded into other_used_bytes */
        memory_of(device, &memory->used, &memory->free);
    }
    return status;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t handle, nvmlUtilization_t *utilization)
{
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(utilization, handle, &table, &device);
    if (status == NVML_SUCCESS) {
        utilization->gpu = device->utilization;
        utilization->memory = device->utilization; /* one figure in the file: busy kernels read memory */
    }
    return status;
}

/* NVML's two-call protocol: too small an array (NULL with a count of 0 included) gets the count needed. */
static nvmlReturn_t report_processes(const struct usage *usage, unsigned int *count, nvmlProcessInfo_t *infos)
{
    if (*count < usage->count) {
        *count = usage->count;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (usage->count > 0 && infos == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    memcpy(infos, usage->processes, usage->count * sizeof *infos);
    *count = usage->count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t handle, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    struct usage usage;
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(count, handle, &table, &device);
    if (status != NVML_SUCCESS)
        return status;
    scan_processes(device->uuid, &usage);
    return report_processes(&usage, count, infos);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t handle, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    return nvmlDeviceGetComputeRunningProcesses_v3(handle, count, infos);
}

/* Compute only: nothing here draws. */
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t handle, unsigned int *count,
                                                      nvmlProcessInfo_t *infos)
{
    (void)infos;
    struct table table;
    const struct device *device;
    nvmlReturn_t status = resolve_for(count, handle, &table, &device);
    if (status == NVML_SUCCESS)
        *count = 0;
    return status;
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t handle, unsigned int *count,
                                                      nvmlProcessInfo_t *infos)
{
    return nvmlDeviceGetGraphicsRunningProcesses_v3(handle, count, infos);
}
