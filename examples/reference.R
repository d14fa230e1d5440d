# Computes, independently in R, every number the four demo examples print, as JSON.
# Its output is committed as examples/reference.json; regenerate with:
#   corral run --lang r examples/reference.R > examples/reference.json
aq <- airquality
fit <- lm(Ozone ~ Solar.R + Wind + Temp, data = aq)
co <- coef(fit)
f4 <- function(x) sprintf("%.4f", x)
months <- sort(unique(aq$Month))
r <- list(
  rows_used = as.character(nobs(fit)),
  coef.intercept = f4(co[["(Intercept)"]]),
  coef.solar_r = f4(co[["Solar.R"]]),
  coef.wind = f4(co[["Wind"]]),
  coef.temp = f4(co[["Temp"]]),
  r_squared = f4(summary(fit)$r.squared)
)
py <- list(rows = as.character(nrow(aq)), complete_rows = as.character(sum(complete.cases(aq))))
for (m in months) {
  py[[sprintf("mean_ozone.month_%d", m)]] <- f4(mean(aq$Ozone[aq$Month == m], na.rm = TRUE))
  py[[sprintf("mean_temp.month_%d", m)]] <- f4(mean(aq$Temp[aq$Month == m]))
}
py[["chart"]] <- "ozone_by_month.png"
monthly_temp <- tapply(aq$Temp, aq$Month, mean)
sql <- list(
  rows = as.character(nrow(aq)),
  ozone_missing = as.character(sum(is.na(aq$Ozone))),
  days_ozone_over_100 = as.character(sum(aq$Ozone > 100, na.rm = TRUE)),
  max_ozone = as.character(max(aq$Ozone, na.rm = TRUE)),
  hottest_month = names(which.max(monthly_temp))
)
for (m in months) sql[[sprintf("mean_temp.month_%d", m)]] <- f4(monthly_temp[[as.character(m)]])
sh <- list(rows = as.character(nrow(aq)))
for (m in months) sh[[sprintf("rows.month_%d", m)]] <- as.character(sum(aq$Month == m))
hot <- aq[order(-aq$Temp, aq$Month, aq$Day), ][1, ]
sh[["max_temp"]] <- as.character(hot$Temp)
sh[["max_temp.month"]] <- as.character(hot$Month)
sh[["max_temp.day"]] <- as.character(hot$Day)
out <- list(
  command = "corral run --lang r examples/reference.R",
  values = list(r = r, python = py, sql = sql, shell = sh)
)
cat(jsonlite::toJSON(out, auto_unbox = TRUE, pretty = TRUE), "\n")
