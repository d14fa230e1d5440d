# Corral's R kernel: one long-lived R process per context, driven by the sandbox's
# supervisor. Started as `R --vanilla --quiet --no-echo --file=THIS_FILE` (no site or
# user profile, no saved workspace: every context starts from the same clean R).
#
#   fd 3  requests, each a u32 big-endian length and a JSON object {"code", "env"}
#   fd 4  events, each a u32 big-endian length, a u8 type (1 event, 2 end) and JSON
#
# A call's code is parsed whole (a syntax error runs nothing), then each top-level
# expression is evaluated in the global environment as the R console would: a visible
# value is printed to stdout, warnings go to stderr after the expression, as the console
# shows them, and the first error ends the call. A data frame as the value of the last
# expression is a `result` (text/plain and text/html) instead of printed output. Plots go
# to a png device per call; each page is sent once, as `display` image/png, at the end.
#
# A call's deadline arrives as SIGINT. R only notes an interrupt when it arrives and acts
# on it at its next check, so the driver runs with interrupts suspended and allows them
# only around the user's code, where an `interrupt` condition is caught: the state stays.

local({
  EVENT <- 1L
  END <- 2L
  # A table or image larger than this is replaced by a note, as in the Python kernel (the
  # supervisor refuses a frame above 16 MiB).
  MAX_MIME_BYTES <- 8 * 1024 * 1024
  HTML_MAX_ROWS <- 1000L

  # The pipes as R connections. User code can close them (closeAllConnections()): they
  # are then opened again from the fds, which stay open. Nothing is lost with the old
  # read buffer, since the next request is only sent after this call's END.
  pipes <- new.env()
  usable <- function(con) !is.null(con) && tryCatch(isOpen(con), error = function(e) FALSE)
  req_pipe <- function() {
    if (!usable(pipes$req)) pipes$req <- file("/dev/fd/3", open = "rb", raw = TRUE)
    pipes$req
  }
  evt_pipe <- function() {
    if (!usable(pipes$evt)) pipes$evt <- file("/dev/fd/4", open = "wb", raw = TRUE)
    pipes$evt
  }

  u32 <- function(n) {
    as.raw(c(n %/% 16777216, (n %/% 65536) %% 256, (n %/% 256) %% 256, n %% 256))
  }

  no_names <- structure(list(), names = character(0)) # serialises as {}

  send <- function(kind, obj) {
    json <- jsonlite::toJSON(obj, auto_unbox = TRUE, null = "null", na = "null", digits = NA)
    body <- charToRaw(enc2utf8(as.character(json)))
    evt <- evt_pipe()
    writeBin(c(u32(length(body)), as.raw(kind), body), evt)
    flush(evt)
  }

  cap_bundle <- function(data) {
    sizes <- vapply(data, function(v) nchar(v, type = "bytes"), numeric(1))
    big <- sizes > MAX_MIME_BYTES
    if (!any(big)) return(data)
    note <- sprintf(
      "[corral: output too large, dropped: %s; limit %d bytes]",
      paste(sprintf("%s (%d bytes)", names(data)[big], sizes[big]), collapse = ", "),
      MAX_MIME_BYTES
    )
    out <- data[!big]
    out[["text/plain"]] <- trimws(paste(c(out[["text/plain"]], note), collapse = "\n"))
    out
  }

  send_bundle <- function(type, data) {
    send(EVENT, list(type = type, data = cap_bundle(data), metadata = no_names))
  }

  send_error <- function(ename, evalue, traceback) {
    flush.console()
    send(EVENT, list(type = "error", ename = ename, evalue = evalue, traceback = as.list(traceback)))
  }

  one_line <- function(call) {
    text <- deparse(call, width.cutoff = 500L, nlines = 2L)
    if (length(text) > 1L) paste(text[1L], "...") else text
  }

  # The user's frames of an error: what sys.calls() saw in the calling handler, between
  # the driver's eval and the handler itself, innermost first as traceback() numbers them.
  user_frames <- function(calls) {
    ours <- quote(eval(corral_expr__, .GlobalEnv))
    at <- which(vapply(calls, identical, logical(1), ours))
    if (length(at) == 0L) return(character(0))
    first <- max(at) + 1L
    last <- length(calls) - 1L # the handler
    if (last >= first && identical(calls[[last]][[1L]], quote(.handleSimpleError))) last <- last - 1L
    if (last < first) return(character(0))
    frames <- calls[first:last]
    if (length(frames) > 50L) frames <- frames[(length(frames) - 49L):length(frames)]
    n <- length(frames)
    rev(paste0(seq_len(n), ": ", vapply(frames, one_line, character(1))))
  }

  error_header <- function(e) {
    call <- conditionCall(e)
    if (is.null(call)) paste0("Error: ", conditionMessage(e))
    else paste0("Error in ", one_line(call), " : ", conditionMessage(e))
  }

  esc <- function(x) {
    x <- gsub("&", "&amp;", x, fixed = TRUE)
    x <- gsub("<", "&lt;", x, fixed = TRUE)
    x <- gsub(">", "&gt;", x, fixed = TRUE)
    gsub("\"", "&quot;", x, fixed = TRUE)
  }

  # A data frame as a plain, escaped HTML table: row names, then the columns as R
  # formats them (format.data.frame, as print does), at most HTML_MAX_ROWS rows.
  html_table <- function(df) {
    n <- nrow(df)
    shown <- df[seq_len(min(n, HTML_MAX_ROWS)), , drop = FALSE]
    cells <- as.matrix(format.data.frame(shown, na.encode = FALSE))
    cells[is.na(cells)] <- "NA"
    cells[] <- trimws(cells)
    head <- paste0("<th>", esc(names(df)), "</th>", collapse = "")
    rows <- if (nrow(cells) == 0L) character(0) else vapply(seq_len(nrow(cells)), function(i) {
      paste0("<tr><th>", esc(rownames(shown)[i]), "</th>",
             paste0("<td>", esc(cells[i, ]), "</td>", collapse = ""), "</tr>")
    }, character(1))
    more <- if (n > HTML_MAX_ROWS) sprintf("<p>%d more rows not shown</p>\n", n - HTML_MAX_ROWS) else ""
    paste0(
      "<table class=\"dataframe\">\n<thead><tr><th></th>", head, "</tr></thead>\n<tbody>\n",
      paste0(rows, collapse = "\n"), if (length(rows)) "\n", "</tbody>\n</table>\n", more
    )
  }

  show_value <- function(value, last) {
    if (last && is.data.frame(value)) {
      text <- paste(utils::capture.output(print(value)), collapse = "\n")
      html <- html_table(value)
      send_bundle("result", list(`text/plain` = text, `text/html` = html))
    } else if (isS4(value)) {
      methods::show(value)
    } else {
      print(value)
    }
  }

  # Plots: a png device, opened on first use, per call; closed at the end of the call,
  # when each page it wrote is sent once and its file deleted.
  plot_dir <- file.path(tempdir(), "corral-plots")
  dir.create(plot_dir, showWarnings = FALSE)
  plot_count <- 0L
  options(device = function(width = 7, height = 5, ...) {
    plot_count <<- plot_count + 1L
    grDevices::png(
      file.path(plot_dir, sprintf("%05d-%%03d.png", plot_count)),
      width = width, height = height, units = "in", res = 100, type = "cairo"
    )
  })

  send_plots <- function() {
    devices <- get(".Devices", envir = baseenv())
    for (d in grDevices::dev.list()) {
      path <- attr(devices[[d]], "filepath")
      if (is.character(path) && startsWith(path, plot_dir)) grDevices::dev.off(d)
    }
    files <- sort(list.files(plot_dir, full.names = TRUE))
    for (f in files) {
      size <- file.size(f)
      if (!is.na(size) && size > 0) {
        png <- jsonlite::base64_enc(readBin(f, "raw", size))
        send_bundle("display", list(`image/png` = png, `text/plain` = "<R plot>"))
      }
    }
    unlink(files)
  }

  # install.packages cannot reach a repository from a sandbox without network; R would
  # only warn and go on. Say so as an error, at once, with what to do instead.
  tools <- new.env()
  tools$install.packages <- function(...) {
    reason <- NULL
    repo <- withRestarts(
      withCallingHandlers(
        {
          utils::install.packages(...)
          NULL
        },
        warning = function(w) {
          msg <- conditionMessage(w)
          if (grepl("^URL '.*': status was '", msg)) {
            reason <<- sub("^URL '.*': status was '(.*)'$", "\\1", msg)
            invokeRestart("muffleWarning")
          }
          if (startsWith(msg, "unable to access index for repository")) {
            invokeRestart("corralUnreachable", sub("^unable to access index for repository (\\S+?):?\n.*$", "\\1", msg))
          }
        }
      ),
      corralUnreachable = function(repo) repo
    )
    if (is.null(repo)) return(invisible(NULL))
    cond <- structure(class = c("networkError", "error", "condition"), list(
      message = sprintf(
        "cannot reach the package repository %s%s: this sandbox has no network access; install from a file in the sandbox with install.packages(\"/work/pkg.tar.gz\", repos = NULL)",
        repo, if (is.null(reason)) "" else sprintf(" (%s)", reason)
      ),
      call = sys.call()
    ))
    stop(cond)
  }
  attach(tools, name = "corral", warn.conflicts = FALSE)
  options(repos = c(CRAN = "https://cloud.r-project.org"))

  # Warnings, as the console shows them after a top-level expression (R's PrintWarnings):
  # with options(warn = 0) the driver collects them itself, since R's own deferred list
  # would name the driver's eval as their call and is printed only at the top level.
  warnings_seen <- list()
  warnings_more <- FALSE
  LONGWARN <- 75L

  # warnings() reads base's last.warning, which only R's own printer of deferred warnings
  # can create (the base environment takes no new bindings): have it made once, quietly.
  local({
    nul <- file("/dev/null", "w")
    sink(nul, type = "message")
    on.exit({
      sink(type = "message")
      close(nul)
    })
    warning("corral")
    .Internal(printDeferredWarnings())
  })

  collect_warning <- function(w) {
    warn <- getOption("warn", 0)
    if (!is.numeric(warn) || warn != 0) return() # R's own handling: ignore, print, or error
    call <- conditionCall(w)
    if (identical(call, quote(eval(corral_expr__, .GlobalEnv)))) call <- NULL
    if (length(warnings_seen) < getOption("nwarnings", 50L)) {
      warnings_seen[[length(warnings_seen) + 1L]] <<- list(message = conditionMessage(w), call = call)
    } else {
      warnings_more <<- TRUE
    }
    invokeRestart("muffleWarning")
  }

  print_warnings <- function() {
    ws <- warnings_seen
    if (length(ws) == 0L) return()
    more <- warnings_more
    warnings_seen <<- list()
    warnings_more <<- FALSE
    n <- length(ws)
    line1 <- function(msg) nchar(strsplit(msg, "\n", fixed = TRUE)[[1L]][1L], type = "width")
    one <- function(w, prefix, extra) {
      if (is.null(w$call)) return(paste0(prefix, w$message, if (prefix == "") " " else "", "\n"))
      dcall <- one_line(w$call)
      long <- extra + nchar(dcall, type = "width") + line1(w$message) > LONGWARN
      paste0(prefix, "In ", dcall, " :", if (long) "\n " else "", " ", w$message, "\n")
    }
    text <- if (n == 1L) {
      paste0("Warning message:\n", one(ws[[1L]], "", 6L))
    } else if (n <= 10L) {
      paste0("Warning messages:\n", paste0(vapply(seq_len(n), function(i) {
        one(ws[[i]], paste0(i, ": "), 10L)
      }, character(1)), collapse = ""))
    } else if (!more && n < 50L) {
      sprintf("There were %d warnings (use warnings() to see them)\n", n)
    } else {
      sprintf("There were %d or more warnings (use warnings() to see the first %d)\n", n, n)
    }
    cat(text, file = stderr())
    # warnings() reads last.warning: a named list, messages as names and calls as values.
    last <- structure(lapply(ws, function(w) w$call), names = vapply(ws, function(w) w$message, ""))
    try(silent = TRUE, {
      if (exists("last.warning", envir = baseenv(), inherits = FALSE) &&
          bindingIsLocked("last.warning", baseenv())) unlockBinding("last.warning", baseenv())
      assign("last.warning", last, envir = baseenv())
    })
  }

  # Evaluate one top-level expression; FALSE if it failed (the call stops there).
  run_expr <- function(corral_expr__, last) {
    calls <- NULL
    tryCatch(
      withCallingHandlers(
        allowInterrupts({
          v <- withVisible(eval(corral_expr__, .GlobalEnv))
          if (v$visible) show_value(v$value, last)
          TRUE
        }),
        warning = collect_warning,
        error = function(e) calls <<- sys.calls()
      ),
      interrupt = function(e) {
        send_error("interrupt", "interrupted", character(0))
        FALSE
      },
      error = function(e) {
        send_error(class(e)[1L], conditionMessage(e), c(error_header(e), user_frames(calls)))
        FALSE
      }
    )
  }

  set_env <- function(env) {
    if (length(env) == 0L) return(function() NULL)
    keys <- names(env)
    old <- Sys.getenv(keys, unset = NA, names = TRUE)
    do.call(Sys.setenv, lapply(env, as.character))
    function() {
      gone <- is.na(old)
      if (any(gone)) Sys.unsetenv(keys[gone])
      if (any(!gone)) do.call(Sys.setenv, as.list(old[!gone]))
    }
  }

  run_call <- function(request, count) {
    restore <- set_env(request$env)
    on.exit(restore())
    # A deadline that fired after the previous call ended was already answered: an
    # interrupt still pending from it is taken here (Sys.sleep checks at once).
    tryCatch(allowInterrupts(Sys.sleep(0)), interrupt = function(e) NULL)
    status <- "ok"
    exprs <- tryCatch(
      parse(text = request$code, keep.source = TRUE, srcfile = srcfilecopy("<text>", request$code)),
      error = function(e) e
    )
    if (inherits(exprs, "error")) {
      send_error("parseError", conditionMessage(exprs), paste0("Error: ", conditionMessage(exprs)))
      status <- "error"
    } else {
      n <- length(exprs)
      for (i in seq_len(n)) {
        ok <- run_expr(exprs[[i]], i == n)
        flush.console()
        print_warnings()
        # An interrupt that came while C code ran without checking (a long BLAS call) is
        # still pending: it ends the call here, before the next expression.
        if (ok) ok <- tryCatch(allowInterrupts({
          Sys.sleep(0)
          TRUE
        }), interrupt = function(e) {
          send_error("interrupt", "interrupted", character(0))
          FALSE
        })
        if (!ok) {
          status <- "error"
          break
        }
      }
    }
    send_plots()
    flush.console()
    send(END, list(executionCount = count, status = status))
  }

  main <- function() {
    send(EVENT, list(type = "ready", pid = Sys.getpid()))
    count <- 0L
    repeat {
      head <- readBin(req_pipe(), "raw", 4L)
      if (length(head) < 4L) break
      n <- sum(as.numeric(head) * c(16777216, 65536, 256, 1))
      body <- if (n > 0) readBin(req_pipe(), "raw", n) else raw(0)
      if (length(body) < n) break
      count <- count + 1L
      request <- jsonlite::parse_json(rawToChar(body))
      tryCatch(run_call(request, count), error = function(e) {
        # A fault of the driver itself: the call ends with it, the kernel goes on.
        send_error("CorralKernelError", conditionMessage(e), character(0))
        send(END, list(executionCount = count, status = "error"))
      })
    }
  }

  suspendInterrupts(main())
  quit(save = "no", status = 0L)
})
