/*
 * The linux-x64 musl prebuild compiles against musl's C headers and Debian's
 * libstdc++ headers, whose configuration was made for glibc. This header sits
 * in front of that configuration (scripts/prebuild/build.ts puts its folder
 * first on the include path) and corrects what musl does not have.
 */

/* libstdc++'s glibc settings test the glibc version; musl behaves like a
   recent glibc in everything they test (pthread_self without libpthread, no
   obsolete isinf/isnan, gets not declared). */
#ifndef __GLIBC_PREREQ
#define __GLIBC_PREREQ(major, minor) 1
#endif

#include_next <bits/c++config.h>

/* glibc 2.30 extensions that musl lacks; <mutex> falls back to the POSIX
   timed functions without them. */
#undef _GLIBCXX_USE_PTHREAD_COND_CLOCKWAIT
#undef _GLIBCXX_USE_PTHREAD_MUTEX_CLOCKLOCK
#undef _GLIBCXX_USE_PTHREAD_RWLOCK_CLOCKLOCK

/* The "gnu" locale model names glibc's spelling of musl's locale_t. */
typedef struct __locale_struct *__locale_t;
