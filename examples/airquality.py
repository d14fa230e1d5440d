# The same data as CSV: monthly means with pandas, and a chart with matplotlib.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

df = pd.read_csv("/work/airquality.csv")
print(f"rows {len(df)}")
print(f"complete_rows {len(df.dropna())}")
monthly = df.groupby("Month")[["Ozone", "Temp"]].mean()
for month, row in monthly.iterrows():
    print(f"mean_ozone.month_{month} {row['Ozone']:.4f}")
    print(f"mean_temp.month_{month} {row['Temp']:.4f}")

fig, ax = plt.subplots(figsize=(7, 4))
names = ["May", "Jun", "Jul", "Aug", "Sep"]
ax.bar(names, monthly["Ozone"], color="#4a7fb5", label="mean ozone (ppb)")
ax.set_ylabel("ozone (ppb)")
ax2 = ax.twinx()
ax2.plot(names, monthly["Temp"], color="#c0504d", marker="o", label="mean temperature (°F)")
ax2.set_ylabel("temperature (°F)")
ax.set_title("New York air quality, 1973: monthly means")
fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.88))
fig.tight_layout()
fig.savefig("/work/ozone_by_month.png", dpi=100)
print("chart ozone_by_month.png")
